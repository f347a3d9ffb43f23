//! Behaviour specific to the SQLite backend: persistence, migrations, corruption, group
//! commit, compression, concurrency with the writer. The shared rules are checked by the
//! conformance suite (`conformance.rs`).

mod support;

use std::sync::Arc;

use oris_core::event::{Durability, EventKind};
use oris_core::id::{InterruptId, RunId, Seq, Timestamp};
use oris_core::store::{Answer, Error, RunFilter, Store};
use oris_sqlite::{SCHEMA_VERSION, SqliteOptions, SqliteStore};
use support::{Run, WriteLock, drive, json, open, poll_once, state_after, tid, wait_until};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Everything the store holds about some threads and runs, for comparisons.
async fn dump(store: &SqliteStore, threads: &[&str], runs: &[RunId]) -> String {
    let mut out = String::new();
    for t in threads {
        let t = tid(t);
        out += &format!("{:?}\n", store.thread(&t).await.unwrap());
        out += &format!(
            "{:?}\n",
            store.events(&t, Seq::ZERO, usize::MAX).await.unwrap()
        );
        out += &format!("{:?}\n", store.snapshot(&t, Seq(u64::MAX)).await.unwrap());
    }
    for r in runs {
        out += &format!("{:?}\n", store.run(*r).await.unwrap());
    }
    out += &format!("{:?}\n", store.runs(&RunFilter::default()).await.unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    // A directory that does not exist yet: open creates it.
    let path = dir.path().join("nested/dir/oris.db");
    let store = open(&path).await;

    // Thread a: two runs (completed, then failed) and a compressed snapshot.
    let mut a = Run::new("a", Seq::ZERO);
    drive(&store, &mut a, &[Run::start, Run::step, Run::step]).await;
    let mut snap = a.step();
    snap.snapshot = Some(
        Run {
            head: Seq(a.head.0 + 1),
            ..a.clone()
        }
        .snapshot(state_after(50)),
    );
    store.commit(snap.clone()).await?;
    a.advance(&snap);
    let c = a.finish();
    store.commit(c.clone()).await?;
    a.advance(&c);
    let mut a2 = Run::new("a", a.head);
    a2.durability = Durability::Batched;
    drive(&store, &mut a2, &[Run::start, Run::step, Run::fail]).await;
    // Thread b: cancelled, with a small raw snapshot. Thread c: still running.
    let mut b = Run::new("b", Seq::ZERO);
    drive(&store, &mut b, &[Run::start, Run::cancel]).await;
    let mut c_run = Run::new("c", Seq::ZERO);
    let mut start = c_run.start();
    start.snapshot = Some(
        Run {
            head: Seq(1),
            ..c_run.clone()
        }
        .snapshot(json(r#"{"counter":0}"#)),
    );
    store.commit(start.clone()).await?;
    c_run.advance(&start);

    let threads = ["a", "b", "c"];
    let runs = [a.run_id, a2.run_id, b.run_id, c_run.run_id];
    let before = dump(&store, &threads, &runs).await;
    let events = store.events(&tid("a"), Seq::ZERO, usize::MAX).await?;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.body.kind()).collect();
    assert!(kinds.contains(&EventKind::NodeFailed) && kinds.contains(&EventKind::RunFailed));
    drop(store);
    // Every connection is closed once the store is dropped (the writer thread is joined):
    // the last one to close checkpoints and removes the WAL.
    assert!(path.exists());
    assert!(!path.with_extension("db-wal").exists());

    let store = open(&path).await;
    assert_eq!(dump(&store, &threads, &runs).await, before);
    assert_eq!(store.thread(&tid("a")).await?.unwrap().head, a2.head);
    // And it keeps working.
    let c = c_run.step();
    assert_eq!(store.commit(c).await?.head, Seq(2));
    Ok(())
}

#[tokio::test]
async fn newer_schema_is_refused_naming_both_versions() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    drop(open(&path).await);
    {
        let raw = rusqlite::Connection::open(&path)?;
        let v: i64 = raw.pragma_query_value(None, "user_version", |r| r.get(0))?;
        assert_eq!(v, SCHEMA_VERSION);
        raw.pragma_update(None, "user_version", 99)?;
    }
    let err = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    let Error::Incompatible(msg) = &err else {
        panic!("expected Incompatible, got {err:?}");
    };
    assert!(msg.contains("version 99"), "{msg}");
    assert!(msg.contains(&format!("version {SCHEMA_VERSION}")), "{msg}");
    assert!(msg.contains("newer"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    std::fs::write(
        &path,
        b"definitely not an sqlite database, just some text here....",
    )?;
    let err = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    Ok(())
}

/// A store with thread `t` holding 3 events (start and two steps) and a snapshot.
async fn three_events(path: &std::path::Path) -> (SqliteStore, Run) {
    let store = open(path).await;
    let mut run = Run::new("t", Seq::ZERO);
    drive(&store, &mut run, &[Run::start, Run::step]).await;
    let mut c = run.step();
    c.snapshot = Some(
        Run {
            head: Seq(3),
            ..run.clone()
        }
        .snapshot(state_after(2)),
    );
    store.commit(c.clone()).await.unwrap();
    run.advance(&c);
    (store, run)
}

fn raw(path: &std::path::Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA ignore_check_constraints = ON")
        .unwrap();
    conn.execute_batch(sql).unwrap();
}

const EVENT_2: &str = "(SELECT key FROM threads WHERE thread_id = 't') * 4294967296 + 2";

fn corrupt(err: Error) -> (String, Option<Seq>, String) {
    match err {
        Error::Corrupt {
            thread_id,
            seq,
            detail,
        } => (thread_id.to_string(), seq, detail),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_in_event_data_is_corrupt_naming_thread_seq_and_column() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let (store, _) = three_events(&path).await;
    raw(
        &path,
        &format!("UPDATE events SET data = '{{\"counter\": ' WHERE id = {EVENT_2}"),
    );
    let err = store.events(&tid("t"), Seq::ZERO, 10).await.unwrap_err();
    let (thread, seq, detail) = corrupt(err.clone());
    assert_eq!((thread.as_str(), seq), ("t", Some(Seq(2))));
    assert!(detail.contains("`data`"), "{detail}");
    assert!(err.to_string().contains("thread `t` at seq 2"), "{err}");
    // Reads that do not touch the damaged row still work.
    assert_eq!(store.events(&tid("t"), Seq(2), 10).await?.len(), 1);
    assert_eq!(store.events(&tid("t"), Seq::ZERO, 1).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn unknown_event_kind_code_is_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let (store, _) = three_events(&path).await;
    raw(
        &path,
        &format!("UPDATE events SET kind = 42 WHERE id = {EVENT_2}"),
    );
    let (thread, seq, detail) = corrupt(store.events(&tid("t"), Seq(1), 10).await.unwrap_err());
    assert_eq!((thread.as_str(), seq), ("t", Some(Seq(2))));
    assert!(
        detail.contains("`kind`") && detail.contains("42"),
        "{detail}"
    );
    Ok(())
}

#[tokio::test]
async fn wrong_column_types_and_gaps_are_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let (store, _) = three_events(&path).await;
    raw(
        &path,
        &format!("UPDATE events SET superstep = 'zero' WHERE id = {EVENT_2}"),
    );
    let (_, seq, detail) = corrupt(store.events(&tid("t"), Seq::ZERO, 10).await.unwrap_err());
    assert_eq!(seq, Some(Seq(2)));
    assert!(
        detail.contains("`superstep`") && detail.contains("text"),
        "{detail}"
    );

    raw(&path, &format!("DELETE FROM events WHERE id = {EVENT_2}"));
    let (_, seq, detail) = corrupt(store.events(&tid("t"), Seq::ZERO, 10).await.unwrap_err());
    assert_eq!(seq, Some(Seq(2)));
    assert!(detail.contains("gap"), "{detail}");
    Ok(())
}

#[tokio::test]
async fn damaged_run_status_and_snapshot_are_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let (store, run) = three_events(&path).await;

    raw(&path, "UPDATE snapshots SET state = X'09'");
    let (thread, _, detail) = corrupt(store.snapshot(&tid("t"), Seq(3)).await.unwrap_err());
    assert_eq!(thread, "t");
    assert!(
        detail.contains("`state`") && detail.contains("format byte 9"),
        "{detail}"
    );

    raw(
        &path,
        r#"UPDATE runs SET status_data = '{"status":"paused"}'"#,
    );
    let (thread, seq, detail) = corrupt(store.run(run.run_id).await.unwrap_err());
    assert_eq!((thread.as_str(), seq), ("t", None));
    assert!(detail.contains("`status_data`"), "{detail}");
    let (thread, ..) = corrupt(store.runs(&RunFilter::default()).await.unwrap_err());
    assert_eq!(thread, "t");

    // The writer validates what it reads too: a status change of the damaged run is
    // refused as corrupt, and the store goes on.
    let err = store.commit(run.finish()).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let other = Run::new("other", Seq::ZERO);
    assert_eq!(store.commit(other.start()).await?.head, Seq(1));

    raw(&path, "UPDATE runs SET status = 'paused'");
    let (_, _, detail) = corrupt(store.run(run.run_id).await.unwrap_err());
    assert!(detail.contains("unknown status"), "{detail}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_share_group_transactions() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let store = Arc::new(open(&path).await);

    // Hold the write lock so the first group stalls while the others queue. The primer's
    // task serves its own group (it found nobody serving) and blocks in it.
    let lock = WriteLock::take(&path);
    let primer = Run::new("primer", Seq::ZERO);
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.commit(primer.start()).await }
    });
    wait_until("the primer's group started", || store.stats().in_group == 1).await;

    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let run = Run::new(&format!("thread-{i}"), Seq::ZERO);
                store.commit(run.start()).await.map(|r| (run, r))
            })
        })
        .collect();
    wait_until("64 commits are queued", || store.stats().queue_depth == 64).await;
    lock.release();

    assert_eq!(first.await??.head, Seq(1));
    for task in tasks {
        let (run, receipt) = task.await??;
        assert_eq!(receipt.head, Seq(1));
        let thread = store.thread(&run.thread_id).await?.unwrap();
        assert_eq!(thread.active_run, Some(run.run_id));
        assert_eq!(store.events(&run.thread_id, Seq::ZERO, 10).await?.len(), 1);
    }
    let stats = store.stats();
    assert_eq!(stats.commits, 65);
    // The primer alone, then the 64 together (handed to the writer thread).
    assert_eq!(stats.transactions, 2, "{stats:?}");
    assert_eq!(stats.synced_transactions, 2, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commits_in_a_group_do_not_affect_the_others() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let store = Arc::new(open(&path).await);
    let mut x = Run::new("x", Seq::ZERO);
    let c = x.start();
    store.commit(c.clone()).await?;
    x.advance(&c);
    let taken = Run::new("taken", Seq::ZERO);
    store.commit(taken.start()).await?;
    let before = store.stats();

    let lock = WriteLock::take(&path);
    let primer = Run::new("primer", Seq::ZERO);
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.commit(primer.start()).await }
    });
    wait_until("the primer's group started", || store.stats().in_group == 1).await;

    // In queue order: two valid steps on x, a stale one (conflict), a run id that exists
    // on another thread, an invalid transition, and valid commits on other threads.
    let step1 = x.step();
    let mut x1 = x.clone();
    x1.advance(&step1);
    let step2 = x1.step();
    let stale = x.step();
    let mut dup = Run::new("dup", Seq::ZERO);
    dup.run_id = taken.run_id;
    let mut bad_transition = x1.clone();
    bad_transition.head = Seq(x1.head.0 + 1);
    let mut cancel_queued = bad_transition.cancel();
    if let Some(oris_core::store::RunWrite::SetStatus { status, .. }) = &mut cancel_queued.run {
        *status = oris_core::status::RunStatus::Queued;
    }
    let others: Vec<Run> = (0..5)
        .map(|i| Run::new(&format!("o{i}"), Seq::ZERO))
        .collect();

    let mut futures = vec![
        Box::pin(store.commit(step1)),
        Box::pin(store.commit(step2)),
        Box::pin(store.commit(stale)),
        Box::pin(store.commit(dup.start())),
        Box::pin(store.commit(cancel_queued)),
    ];
    for o in &others {
        futures.push(Box::pin(store.commit(o.start())));
    }
    for f in &mut futures {
        assert!(poll_once(f.as_mut()).is_pending());
    }
    assert_eq!(store.stats().queue_depth, 10);
    lock.release();
    first.await??;

    let mut results = Vec::new();
    for f in futures {
        results.push(f.await);
    }
    assert_eq!(results[0].as_ref().unwrap().head, Seq(2));
    assert_eq!(results[1].as_ref().unwrap().head, Seq(3));
    assert!(
        matches!(&results[2], Err(Error::Conflict { expected, actual, .. }) if *expected == Seq(1) && *actual == Seq(3)),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(&results[3], Err(Error::InvalidCommit { detail, .. }) if detail.contains("already exists")),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(&results[4], Err(Error::InvalidTransition { .. })),
        "{:?}",
        results[4]
    );
    for r in &results[5..] {
        assert_eq!(r.as_ref().unwrap().head, Seq(1));
    }
    // Nothing of the failed commits leaked: the duplicate did not create its thread, the
    // taken run still belongs to its thread, x has exactly three events.
    assert_eq!(store.thread(&tid("dup")).await?, None);
    assert_eq!(
        store.run(taken.run_id).await?.unwrap().thread_id,
        tid("taken")
    );
    assert_eq!(store.events(&tid("x"), Seq::ZERO, 10).await?.len(), 3);
    for o in &others {
        assert_eq!(store.thread(&o.thread_id).await?.unwrap().head, Seq(1));
    }
    let after = store.stats();
    assert_eq!(after.transactions - before.transactions, 2, "{after:?}");
    assert_eq!(after.commits - before.commits, 1 + 7);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_work_while_the_writer_is_busy() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let (store, run) = three_events(&path).await;
    let store = Arc::new(store);

    let lock = WriteLock::take(&path);
    let pending = tokio::spawn({
        let store = store.clone();
        async move { store.commit(run.step()).await }
    });
    wait_until("the commit's group started", || store.stats().in_group == 1).await;

    // The writer is stuck in its busy timeout; reads see the last committed state.
    assert_eq!(store.thread(&tid("t")).await?.unwrap().head, Seq(3));
    assert_eq!(store.events(&tid("t"), Seq::ZERO, 100).await?.len(), 3);
    assert_eq!(store.runs(&RunFilter::unfinished()).await?.len(), 1);
    assert!(store.snapshot(&tid("t"), Seq(3)).await?.is_some());
    assert!(!pending.is_finished());

    lock.release();
    assert_eq!(pending.await??.head, Seq(4));
    assert_eq!(store.events(&tid("t"), Seq::ZERO, 100).await?.len(), 4);
    Ok(())
}

#[tokio::test]
async fn a_lock_held_past_the_busy_timeout_makes_the_group_unavailable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let options = SqliteOptions {
        busy_timeout: std::time::Duration::from_millis(50),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(&path, options).await?;
    let run = Run::new("t", Seq::ZERO);
    let lock = WriteLock::take(&path);
    let err = store.commit(run.start()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    lock.release();
    assert_eq!(store.thread(&tid("t")).await?, None);
    // Retrying succeeds.
    assert_eq!(store.commit(run.start()).await?.head, Seq(1));
    Ok(())
}

#[tokio::test]
async fn snapshots_round_trip_compressed_or_not() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let store = open(&path).await;
    let mut run = Run::new("t", Seq::ZERO);
    let c = run.start();
    store.commit(c.clone()).await?;
    run.advance(&c);

    let conn = rusqlite::Connection::open(&path)?;
    let format = || -> u8 {
        conn.query_row("SELECT state FROM snapshots", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .unwrap()[0]
    };
    let cases = [
        (json("{}"), 0u8),
        (json(r#"{"counter":1,"log":["short"]}"#), 0),
        (state_after(100), 1),
        (json(&format!("[{}]", vec!["\"é日本\""; 4000].join(","))), 1),
    ];
    for (state, expected_format) in cases {
        let mut c = run.step();
        let mut at = run.clone();
        at.advance(&c);
        c.snapshot = Some(at.snapshot(state.clone()));
        store.commit(c.clone()).await?;
        run.advance(&c);
        let snap = store.snapshot(&tid("t"), run.head).await?.unwrap();
        assert_eq!(snap.state, state);
        assert_eq!(snap, c.snapshot.clone().unwrap());
        assert_eq!(format(), expected_format, "{} bytes", state.json().len());
        // Only one snapshot row per thread, and the bound is respected.
        assert_eq!(store.snapshot(&tid("t"), Seq(run.head.0 - 1)).await?, None);
    }
    assert_eq!(store.delete_snapshots(&tid("t")).await?, 1);
    assert_eq!(store.delete_snapshots(&tid("t")).await?, 0);
    assert!(matches!(
        store.delete_snapshots(&tid("nobody")).await,
        Err(Error::ThreadNotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn durability_picks_the_sync_level_per_group() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir.path().join("oris.db")).await;
    let mut batched = Run::new("b", Seq::ZERO);
    batched.durability = Durability::Batched;
    for _ in 0..3 {
        let c = if batched.head == Seq::ZERO {
            batched.start()
        } else {
            batched.step()
        };
        store.commit(c.clone()).await?;
        batched.advance(&c);
    }
    let s = store.stats();
    assert_eq!(
        (s.transactions, s.synced_transactions, s.commits),
        (3, 0, 3)
    );
    let mut exit = Run::new("e", Seq::ZERO);
    exit.durability = Durability::Exit;
    store.commit(exit.start()).await?;
    store.commit(Run::new("s", Seq::ZERO).start()).await?;
    let s = store.stats();
    assert_eq!(
        (s.transactions, s.synced_transactions, s.commits),
        (5, 2, 5)
    );
    Ok(())
}

#[tokio::test]
async fn unfinished_runs_are_listed_in_creation_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir.path().join("oris.db")).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut run = Run::new(&format!("t{i}"), Seq::ZERO);
        let c = run.start();
        store.commit(c.clone()).await?;
        run.advance(&c);
        if i % 2 == 0 {
            store.commit(run.finish()).await?;
        } else {
            ids.push(run.run_id);
        }
    }
    let listed: Vec<RunId> = store
        .runs(&RunFilter::unfinished())
        .await?
        .iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(listed, ids);
    let page = store
        .runs(&RunFilter {
            after: Some(ids[0]),
            limit: 1,
            ..RunFilter::unfinished()
        })
        .await?;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].run_id, ids[1]);
    Ok(())
}

/// Only a run's end marks it `ended` (out of the partial index `runs_unfinished`): a
/// suspension, a resume and a claim leave it in. The column agrees with the status of every
/// run, and the index holds exactly the unfinished ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_end_marks_a_run_ended() -> TestResult {
    use oris_core::status::RunStatus;
    use oris_testkit::build;
    use oris_testkit::writer::Writer;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let store = open(&path).await;
    let s: &dyn Store = &store;
    let mut done = Writer::start(s, "ended-done").await;
    done.complete(s).await;
    let mut resumed = Writer::start(s, "ended-resumed").await;
    let (r, i) = (resumed.run.run_id, InterruptId::generate());
    let h = resumed.head;
    let c = build::set_status(
        &resumed.thread,
        h,
        r,
        build::status_interrupted(vec![build::pending(i, "ask", "{}")]),
        vec![
            build::interrupt_raised(r, h + 1, "ask", i, "{}"),
            build::run_suspended(r, h + 2, &[i], None, &[]),
        ],
    );
    resumed.commit(s, c).await;
    let h = resumed.head;
    let c = build::set_status(
        &resumed.thread,
        h,
        r,
        RunStatus::Running,
        vec![build::run_resumed(r, h + 1)],
    );
    resumed.commit(s, c).await;
    let mut waiting = Writer::start(s, "ended-waiting").await;
    let (w, h) = (waiting.run.run_id, waiting.head);
    let c = build::set_status(
        &waiting.thread,
        h,
        w,
        build::status_waiting(None, &["go"]),
        vec![build::run_suspended(w, h + 1, &[], None, &["go"])],
    );
    waiting.commit(s, c).await;
    let t = tid("ended-claimed");
    let claimed = build::queued_run(&t, build::GRAPH, "v", build::at(1), 0, None);
    store.commit(build::create(&claimed, vec![])).await?;
    let got = store
        .claim(&build::claim_request(
            "w",
            Timestamp::now(),
            std::time::Duration::from_secs(60),
            10,
        ))
        .await?;
    assert_eq!(got.len(), 1);
    let t = tid("ended-cancelled");
    let cancelled = build::queued_run(&t, build::GRAPH, "v", build::at(1), 0, None);
    store.commit(build::create(&cancelled, vec![])).await?;
    store
        .commit(build::finish(
            &t,
            0,
            cancelled.run_id,
            build::status_cancelled("no"),
            vec![],
        ))
        .await?;

    let conn = rusqlite::Connection::open(&path)?;
    let (runs, ended, disagree, indexed): (i64, i64, i64, i64) = conn.query_row(
        "SELECT (SELECT count(*) FROM runs),
                (SELECT count(*) FROM runs WHERE ended = 1),
                (SELECT count(*) FROM runs
                 WHERE (ended IS NULL) <> (status IN ('queued', 'running', 'interrupted', 'waiting'))),
                (SELECT count(*) FROM runs INDEXED BY runs_unfinished WHERE ended IS NULL)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    assert_eq!((runs, ended, disagree, indexed), (5, 2, 0, 3));
    Ok(())
}

/// W4's storage: a 100-superstep run with ~90-byte updates, its start and end, and a
/// final compressed snapshot, measured as bytes of used pages per run (issue #2: ≤ 15 KB).
#[tokio::test]
async fn a_hundred_superstep_run_is_compact() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir.path().join("oris.db")).await;
    let runs = 20;
    let start = store.bytes_used().await?;
    for r in 0..runs {
        let mut run = Run::new(&format!("w4-{r}"), Seq::ZERO);
        run.durability = Durability::Batched;
        let c = run.start();
        store.commit(c.clone()).await?;
        run.advance(&c);
        for i in 0..100 {
            let mut c = run.step();
            if i % 10 == 9 {
                let mut at = run.clone();
                at.advance(&c);
                c.snapshot = Some(at.snapshot(state_after(i + 1)));
            }
            store.commit(c.clone()).await?;
            run.advance(&c);
        }
        store.commit(run.finish()).await?;
    }
    let per_run = (store.bytes_used().await? - start) / runs;
    println!("bytes per 100-superstep run: {per_run}");
    assert!(per_run <= 15 * 1024, "{per_run} bytes per run");
    Ok(())
}

#[tokio::test]
async fn events_view_shows_the_log_unpacked() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let (store, run) = three_events(&path).await;
    let events = store.events(&tid("t"), Seq::ZERO, 10).await?;
    let conn = rusqlite::Connection::open(&path)?;
    let mut stmt =
        conn.prepare("SELECT thread_id, seq, run_id, at FROM events_view ORDER BY seq")?;
    let rows: Vec<(String, i64, Vec<u8>, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), events.len());
    for (row, event) in rows.iter().zip(&events) {
        assert_eq!(row.0, "t");
        assert_eq!(row.1 as u64, event.seq.0);
        assert_eq!(row.2.as_slice(), run.run_id.as_uuid().as_bytes());
        assert_eq!(row.3, event.at.0);
    }
    Ok(())
}

/// On a current-thread runtime callers cannot block their thread, so the writer thread
/// serves every commit; concurrent commits still share group transactions.
#[tokio::test]
async fn current_thread_runtime_commits_through_the_writer_thread_in_groups() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let store = Arc::new(open(&path).await);

    let lock = WriteLock::take(&path);
    let spawn = |name: String| {
        let store = store.clone();
        tokio::spawn(async move {
            let run = Run::new(&name, Seq::ZERO);
            store.commit(run.start()).await
        })
    };
    let first = spawn("primer".into());
    wait_until("the writer took the primer", || store.stats().in_group == 1).await;
    let tasks: Vec<_> = (0..10).map(|i| spawn(format!("t{i}"))).collect();
    wait_until("10 commits are queued", || store.stats().queue_depth == 10).await;
    lock.release();

    assert_eq!(first.await??.head, Seq(1));
    for task in tasks {
        assert_eq!(task.await??.head, Seq(1));
    }
    let stats = store.stats();
    assert_eq!((stats.commits, stats.transactions), (11, 2), "{stats:?}");
    Ok(())
}

/// A commit alone in its group runs without a savepoint; refused, it must still leave
/// nothing behind, and the next commit must land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lone_commit_leaves_nothing_behind() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir.path().join("oris.db")).await;
    let taken = Run::new("taken", Seq::ZERO);
    store.commit(taken.start()).await?;
    let before = store.stats();

    let mut dup = Run::new("dup", Seq::ZERO);
    dup.run_id = taken.run_id;
    let err = store.commit(dup.start()).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidCommit { detail, .. } if detail.contains("already exists")),
        "{err:?}"
    );
    assert_eq!(store.thread(&tid("dup")).await?, None);
    assert_eq!(store.stats().transactions, before.transactions);

    let ok = Run::new("ok", Seq::ZERO);
    assert_eq!(store.commit(ok.start()).await?.head, Seq(1));
    assert_eq!(store.thread(&tid("ok")).await?.unwrap().head, Seq(1));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Interrupts and deliveries

/// Everything the store holds about a thread's interrupts and deliveries.
async fn dump_waits(store: &SqliteStore, thread: &str, ids: &[InterruptId]) -> String {
    let t = tid(thread);
    let mut out = format!("{:?}\n", store.interrupts(&t).await.unwrap());
    for id in ids {
        out += &format!("{:?}\n", store.interrupt(*id).await.unwrap());
    }
    out += &format!("{:?}\n", store.deliveries(&t, false).await.unwrap());
    out += &format!("{:?}\n", store.deliveries(&t, true).await.unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupts_and_deliveries_survive_close_and_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let store = open(&path).await;
    let (i1, i2, i3) = (
        InterruptId::generate(),
        InterruptId::generate(),
        InterruptId::generate(),
    );

    // Thread a: i1 answered then applied, i2 answered only, i3 neither.
    let mut a = Run::new("a", Seq::ZERO);
    drive(&store, &mut a, &[Run::start, Run::step]).await;
    let c = a.suspend(&[i1, i2, i3]);
    store.commit(c.clone()).await?;
    a.advance(&c);
    let v1 = json(r#"{"approved": true, "by":"ana"}"#);
    let (answer, _) = store
        .answer_interrupt(i1, v1.clone(), Timestamp(1_700_000_000_001))
        .await?;
    assert_eq!(answer, Answer::Recorded);
    let c = a.resume(i1, v1.clone());
    store.commit(c.clone()).await?;
    a.advance(&c);
    let (answer, _) = store
        .answer_interrupt(i2, json("[1, 2.50]"), Timestamp(1_700_000_000_002))
        .await?;
    assert_eq!(answer, Answer::Recorded);

    // Deliveries: d2 consumed, d1 and d3 pending; d1 and d3 keyed.
    let (d1, new) = store
        .deliver(
            &a.thread_id,
            "paid",
            json(r#"{"amount": 5}"#),
            Some("k1".into()),
            Timestamp(10),
        )
        .await?;
    assert!(new);
    let (d2, _) = store
        .deliver(&a.thread_id, "shipped", json("null"), None, Timestamp(11))
        .await?;
    let (d3, _) = store
        .deliver(
            &a.thread_id,
            "paid",
            json("7"),
            Some("k3".into()),
            Timestamp(12),
        )
        .await?;
    let c = a.receive(&d2);
    store.commit(c.clone()).await?;
    a.advance(&c);

    let ids = [i1, i2, i3];
    let before = dump_waits(&store, "a", &ids).await;
    let stored = store.interrupt(i1).await?.unwrap();
    assert_eq!(
        stored.answer,
        Some((v1.clone(), Timestamp(1_700_000_000_001)))
    );
    assert_eq!(stored.applied_seq, Some(Seq(7)));
    let pending = store.deliveries(&a.thread_id, true).await?;
    assert_eq!(pending, vec![d1.clone(), d3.clone()]);
    drop(store);

    let store = open(&path).await;
    assert_eq!(dump_waits(&store, "a", &ids).await, before);
    // And the rules still hold against what was read back.
    let (answer, record) = store
        .answer_interrupt(i2, json("[1,2.5]"), Timestamp(20))
        .await?;
    assert_eq!(answer, Answer::AlreadyAnswered);
    assert_eq!(
        record.answer,
        Some((json("[1, 2.50]"), Timestamp(1_700_000_000_002)))
    );
    let err = store
        .answer_interrupt(i1, json("false"), Timestamp(21))
        .await
        .unwrap_err();
    assert_eq!(err, Error::ResumeConflict { interrupt_id: i1 });
    let (answer, _) = store.answer_interrupt(i3, json("3"), Timestamp(22)).await?;
    assert_eq!(answer, Answer::Recorded);
    assert_eq!(
        store
            .deliver(
                &a.thread_id,
                "paid",
                json(r#"{ "amount" : 5 }"#),
                Some("k1".into()),
                Timestamp(23)
            )
            .await?,
        (d1.clone(), false)
    );
    let err = store
        .deliver(
            &a.thread_id,
            "paid",
            json("8"),
            Some("k3".into()),
            Timestamp(24),
        )
        .await
        .unwrap_err();
    assert_eq!(err, Error::IdempotencyConflict { key: "k3".into() });
    let (d4, new) = store
        .deliver(
            &a.thread_id,
            "paid",
            json("9"),
            Some("k4".into()),
            Timestamp(25),
        )
        .await?;
    assert!(new);
    assert_eq!(
        store.deliveries(&a.thread_id, true).await?,
        vec![d1, d3, d4]
    );
    // A raised id stays taken across reopening.
    let mut b = Run::new("b", Seq::ZERO);
    drive(&store, &mut b, &[Run::start]).await;
    let err = store.commit(b.suspend(&[i1])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidCommit { .. }), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_answers_from_32_tasks_record_exactly_one() -> TestResult {
    const TASKS: usize = 32;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(open(&dir.path().join("oris.db")).await);
    let ids = [InterruptId::generate(), InterruptId::generate()];
    let mut run = Run::new("race", Seq::ZERO);
    drive(&store, &mut run, &[Run::start]).await;
    let c = run.suspend(&ids);
    store.commit(c.clone()).await?;
    run.advance(&c);

    // ids[0]: 32 different values; ids[1]: one value, spelt two ways.
    for (round, id) in ids.into_iter().enumerate() {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|k| {
                let (store, barrier) = (store.clone(), barrier.clone());
                let value = match (round, k % 2) {
                    (0, _) => json(&format!(r#"{{"caller":{k}}}"#)),
                    (_, 0) => json(r#"{"a":1,"b":2}"#),
                    _ => json(r#"{ "b" : 2, "a" : 1 }"#),
                };
                let at = Timestamp(1_000 + k as i64);
                tokio::spawn(async move {
                    barrier.wait().await;
                    let result = store.answer_interrupt(id, value.clone(), at).await;
                    (value, at, result)
                })
            })
            .collect();
        let mut recorded = Vec::new();
        let mut returned = Vec::new();
        for task in tasks {
            let (value, at, result) = task.await?;
            match result {
                Ok((Answer::Recorded, record)) => {
                    recorded.push((value, at));
                    returned.push(record);
                }
                Ok((Answer::AlreadyAnswered, record)) => {
                    assert_eq!(round, 1, "AlreadyAnswered for a different value");
                    returned.push(record);
                }
                Err(e) => {
                    assert_eq!(round, 0, "the same value failed: {e:?}");
                    assert_eq!(e, Error::ResumeConflict { interrupt_id: id });
                }
            }
        }
        assert_eq!(recorded.len(), 1, "round {round}: {recorded:?}");
        let stored = store.interrupt(id).await?.unwrap();
        assert_eq!(stored.answer, Some(recorded[0].clone()), "round {round}");
        for record in returned {
            assert_eq!(record, stored, "round {round}");
        }
    }
    // Answers are written like commits, but not fsynced on their own: the commit that
    // applies an answer (the caller's next write) is, and the WAL is sequential.
    let stats = store.stats();
    assert_eq!(stats.queue_depth, 0);
    assert!(stats.transactions >= 3, "{stats:?}");
    Ok(())
}

/// A store with thread `t` whose run raised interrupt `id` and has delivery `k` pending.
async fn one_interrupt_one_delivery(path: &std::path::Path, id: InterruptId) -> SqliteStore {
    let store = open(path).await;
    let mut run = Run::new("t", Seq::ZERO);
    drive(&store, &mut run, &[Run::start]).await;
    let c = run.suspend(&[id]);
    store.commit(c.clone()).await.unwrap();
    store
        .deliver(
            &tid("t"),
            "paid",
            json("{}"),
            Some("k".into()),
            Timestamp(1),
        )
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn damaged_interrupt_and_delivery_rows_are_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let id = InterruptId::generate();
    let store = one_interrupt_one_delivery(&path, id).await;
    let good = store.interrupt(id).await?.unwrap();

    raw(&path, "UPDATE interrupts SET payload = '{\"q\": '");
    let (thread, seq, detail) = corrupt(store.interrupt(id).await.unwrap_err());
    assert_eq!((thread.as_str(), seq), ("t", None));
    assert!(
        detail.contains("`payload`") && detail.contains(&id.to_string()),
        "{detail}"
    );
    let (thread, _, detail) = corrupt(store.interrupts(&tid("t")).await.unwrap_err());
    assert_eq!(thread, "t");
    assert!(detail.contains("`payload`"), "{detail}");
    // The writer validates what it reads: an answer is refused as corrupt, and the store
    // goes on.
    let (thread, ..) = corrupt(
        store
            .answer_interrupt(id, json("1"), Timestamp(2))
            .await
            .unwrap_err(),
    );
    assert_eq!(thread, "t");
    let other = Run::new("other", Seq::ZERO);
    assert_eq!(store.commit(other.start()).await?.head, Seq(1));

    raw(
        &path,
        "UPDATE interrupts SET payload = '{\"q\": 0}', raised_seq = 'two'",
    );
    let (_, _, detail) = corrupt(store.interrupt(id).await.unwrap_err());
    assert!(
        detail.contains("`raised_seq`") && detail.contains("text"),
        "{detail}"
    );

    raw(
        &path,
        "UPDATE interrupts SET raised_seq = 2, answer = '1', answered_at = NULL",
    );
    let (_, _, detail) = corrupt(store.interrupt(id).await.unwrap_err());
    assert!(detail.contains("`answered_at`"), "{detail}");

    raw(&path, "UPDATE interrupts SET answer = NULL");
    assert_eq!(store.interrupt(id).await?.unwrap(), good, "repaired");

    raw(
        &path,
        "CREATE TABLE kept AS SELECT key, status_data FROM runs",
    );
    raw(
        &path,
        "UPDATE runs SET status_data = '{\"status\":\"paused\"}'",
    );
    // Reading an interrupt does not need its run's status; answering one does.
    assert_eq!(store.interrupt(id).await?.unwrap(), good);
    let (thread, _, detail) = corrupt(
        store
            .answer_interrupt(id, json("1"), Timestamp(3))
            .await
            .unwrap_err(),
    );
    assert_eq!(thread, "t");
    assert!(detail.contains("`status_data`"), "{detail}");
    // A delivery may make the thread's active run ready, so it reads its status too.
    let (thread, _, detail) = corrupt(
        store
            .deliver(&tid("t"), "other", json("{}"), None, Timestamp(3))
            .await
            .unwrap_err(),
    );
    assert_eq!(thread, "t");
    assert!(detail.contains("`status_data`"), "{detail}");
    raw(
        &path,
        "UPDATE runs SET status_data = (SELECT status_data FROM kept WHERE kept.key = runs.key)",
    );
    assert_eq!(
        store.deliveries(&tid("t"), false).await?.len(),
        1,
        "nothing delivered"
    );

    raw(&path, "UPDATE interrupts SET interrupt_id = X'0102'");
    let (thread, _, detail) = corrupt(store.interrupts(&tid("t")).await.unwrap_err());
    assert_eq!(thread, "t");
    assert!(
        detail.contains("`interrupt_id`") && detail.contains("2 bytes"),
        "{detail}"
    );

    raw(&path, "UPDATE deliveries SET payload = 'not json'");
    let (thread, _, detail) = corrupt(store.deliveries(&tid("t"), true).await.unwrap_err());
    assert_eq!(thread, "t");
    assert!(detail.contains("`payload`"), "{detail}");
    let (thread, ..) = corrupt(
        store
            .deliver(
                &tid("t"),
                "paid",
                json("{}"),
                Some("k".into()),
                Timestamp(4),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(thread, "t");
    // A delivery without that key does not read the damaged row.
    assert!(
        store
            .deliver(&tid("t"), "paid", json("{}"), None, Timestamp(5))
            .await?
            .1
    );
    raw(
        &path,
        "UPDATE deliveries SET payload = '{}', consumed_seq = -1",
    );
    let (_, _, detail) = corrupt(store.deliveries(&tid("t"), false).await.unwrap_err());
    assert!(detail.contains("`consumed_seq`"), "{detail}");
    Ok(())
}

/// SQLite's automatic checkpoint on the write connection (every 1,000 WAL pages) keeps the
/// WAL file reused at about 2 MB (1,000 pages of 2 KiB) under a steady write load: the
/// checkpoint copies the pages into the database file and the next write starts the WAL
/// over. Without it the WAL grows with every commit (here 2,400 commits: 38 MB with 4 KiB
/// pages and `wal_autocheckpoint = 100000`), and a commit that extends the file costs more
/// to fsync (docs/benchmarks.md, W3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_a_write_load() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let wal = dir.path().join("oris.db-wal");
    let store = open(&path).await;
    let db_before = std::fs::metadata(&path)?.len();
    let mut largest = 0;
    for i in 0..600 {
        let name = format!("t{i}");
        let mut run = Run::new(&name, Seq::ZERO);
        drive(
            &store,
            &mut run,
            &[Run::start, Run::step, Run::step, Run::finish],
        )
        .await;
        // Reads between the commits, as the engine does.
        assert!(store.thread(&tid(&name)).await?.is_some());
        largest = largest.max(std::fs::metadata(&wal)?.len());
    }
    assert_eq!(store.stats().commits, 2400);
    // 1,000 frames of 2 KiB pages (+ 24-byte headers) and one group's overshoot.
    assert!(largest <= 3 << 20, "the WAL grew to {largest} bytes");
    assert!(
        largest >= 1 << 20,
        "the load never filled the WAL ({largest} bytes)"
    );
    let db_after = std::fs::metadata(&path)?.len();
    assert!(
        db_after > db_before,
        "no checkpoint moved pages into the database file ({db_before} → {db_after} bytes)"
    );
    drop(store);
    assert!(!wal.exists(), "closing the store removes the WAL");
    Ok(())
}

fn page_size(path: &std::path::Path) -> u32 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap()
}

/// `SqliteOptions::page_size` sets the page size of a file the store creates (2 KiB by
/// default); a file that exists keeps its own, whatever the options say.
#[tokio::test]
async fn a_new_file_gets_the_page_size_and_an_existing_file_keeps_its_own() -> TestResult {
    let dir = tempfile::tempdir()?;
    let small = dir.path().join("small.db");
    drop(open(&small).await);
    assert_eq!(page_size(&small), oris_sqlite::DEFAULT_PAGE_SIZE);
    assert_eq!(oris_sqlite::DEFAULT_PAGE_SIZE, 2048);

    let large = dir.path().join("large.db");
    let options = |page_size| SqliteOptions {
        page_size,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(&large, options(4096)).await?;
    let mut run = Run::new("t", Seq::ZERO);
    drive(&store, &mut run, &[Run::start, Run::step, Run::finish]).await;
    drop(store);
    assert_eq!(page_size(&large), 4096);

    // Reopened with other options: the pages stay as they are, and so does the data.
    let store = SqliteStore::open(&large, options(1024)).await?;
    assert_eq!(store.thread(&tid("t")).await?.map(|t| t.head), Some(Seq(3)));
    drop(store);
    assert_eq!(page_size(&large), 4096);
    Ok(())
}

#[tokio::test]
async fn a_page_size_that_is_not_a_power_of_two_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [0, 256, 1000, 131_072] {
        let path = dir.path().join(format!("bad-{bad}.db"));
        let options = SqliteOptions {
            page_size: bad,
            ..SqliteOptions::default()
        };
        let err = SqliteStore::open(&path, options).await.unwrap_err();
        assert!(
            matches!(&err, Error::Incompatible(m) if m.contains("page size")),
            "{bad}: {err:?}"
        );
        assert!(!path.exists(), "{bad}: the file was created");
    }
}

/// Short reads run on the write connection when it is idle and on the read pool when it
/// is not: under concurrent commits every read still sees the caller's own last commit,
/// and a page of events longer than what is read on the write connection comes back whole
/// and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_each_callers_last_commit_while_others_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(open(&dir.path().join("oris.db")).await);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let name = format!("t{t}");
            let mut run = Run::new(&name, Seq::ZERO);
            drive(&store, &mut run, &[Run::start]).await;
            for i in 2..=150u64 {
                drive(&store, &mut run, &[Run::step]).await;
                let thread = store.thread(&tid(&name)).await.unwrap().unwrap();
                assert_eq!(thread.head, Seq(i));
                let last = store.events(&tid(&name), Seq(i - 1), 10).await.unwrap();
                assert_eq!(last.iter().map(|e| e.seq).collect::<Vec<_>>(), [Seq(i)]);
            }
            for (after, limit, expect) in [
                (0, 1000, 150),
                (0, 100, 100),
                (20, 64, 64),
                (20, 65, 65),
                (100, 1000, 50),
                (150, 1000, 0),
            ] {
                let events = store.events(&tid(&name), Seq(after), limit).await.unwrap();
                let seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
                let want: Vec<u64> = (after + 1..=after + expect).collect();
                assert_eq!(seqs, want, "after {after}, limit {limit}");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    Ok(())
}

/// Two stores on one file (as two processes would be): each one's reads — on its idle write
/// connection once it has written — see the other's latest commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_the_write_connection_see_another_stores_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let a = open(&path).await;
    let b = open(&path).await;
    let mut mine = Run::new("a", Seq::ZERO);
    let mut theirs = Run::new("b", Seq::ZERO);
    drive(&a, &mut mine, &[Run::start, Run::step]).await;
    for i in 1..=20u64 {
        drive(
            &b,
            &mut theirs,
            &[if i == 1 { Run::start } else { Run::step }],
        )
        .await;
        drive(&a, &mut mine, &[Run::step]).await;
        let seen = a.thread(&tid("b")).await?.map(|t| t.head);
        assert_eq!(seen, Some(Seq(i)), "after b's commit {i}");
        let last = a.events(&tid("b"), Seq(i - 1), 10).await?;
        assert_eq!(last.iter().map(|e| e.seq).collect::<Vec<_>>(), [Seq(i)]);
        assert_eq!(b.thread(&tid("a")).await?.map(|t| t.head), Some(Seq(i + 2)));
    }
    Ok(())
}
