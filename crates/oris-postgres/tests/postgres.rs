//! PostgreSQL-specific behaviour: migrations, two stores (two pools, as two processes
//! would have) on one database, wake-ups, error messages, corruption checks, indexes, and
//! reconnecting after the server restarts.
//!
//! Needs `ORIS_TEST_PG_URL`; see `support`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use oris_core::id::Seq;
use oris_core::store::{Error, RunFilter, Store};
use oris_postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION, Wake};
use oris_testkit::build;
use oris_testkit::writer::Writer;
use support::{SchemaGuard, fresh, fresh_schema, options, raw, raw_query, url};
use tokio::sync::Barrier;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn guard(schema: &str) -> SchemaGuard {
    SchemaGuard {
        url: url(),
        schema: schema.to_owned(),
    }
}

/// `1`, `2`, … up to the latest version: one row per applied migration.
fn every_version() -> Vec<String> {
    (1..=SCHEMA_VERSION).map(|v| v.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_and_newer_versions_are_refused() -> TestResult {
    let schema = fresh_schema();
    let _guard = guard(&schema);
    let store = PostgresStore::connect(&url(), options(&schema, true)).await?;
    let versions = raw_query(
        &schema,
        "SELECT version FROM oris_schema_migrations ORDER BY version",
    )
    .await;
    assert_eq!(versions, every_version());
    // Re-running, explicitly and by connecting again, changes nothing.
    assert_eq!(store.migrate().await?, SCHEMA_VERSION);
    let again = PostgresStore::connect(&url(), options(&schema, false)).await?;
    assert_eq!(again.migrate().await?, SCHEMA_VERSION);
    let versions = raw_query(&schema, "SELECT count(*) FROM oris_schema_migrations").await;
    assert_eq!(versions, vec![SCHEMA_VERSION.to_string()]);

    // A database migrated by a newer Oris is refused, naming both versions.
    let newer = SCHEMA_VERSION + 1;
    raw(
        &schema,
        &format!("INSERT INTO oris_schema_migrations (version) VALUES ({newer})"),
    )
    .await;
    let err = PostgresStore::connect(&url(), options(&schema, true))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Incompatible(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("version {newer}")), "{msg}");
    assert!(msg.contains(&format!("version {SCHEMA_VERSION}")), "{msg}");
    assert!(matches!(store.migrate().await, Err(Error::Incompatible(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_connections_migrate_once() -> TestResult {
    let schema = fresh_schema();
    let _guard = guard(&schema);
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let schema = schema.clone();
            tokio::spawn(async move {
                PostgresStore::connect(&url(), options(&schema, i % 2 == 0)).await
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let versions = raw_query(
        &schema,
        "SELECT version FROM oris_schema_migrations ORDER BY version",
    )
    .await;
    assert_eq!(versions, every_version());
    Ok(())
}

/// Two stores — two pools, like two processes — race on one thread: in every round
/// exactly one commit wins and the loser sees the winner's head.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_thread_exactly_one_wins() -> TestResult {
    let (a, _guard) = fresh(true).await;
    let b = PostgresStore::connect(&url(), options(a.schema(), false)).await?;
    let stores: [Arc<dyn Store>; 2] = [Arc::new(a), Arc::new(b)];
    let mut w = Writer::start(&*stores[0], "shared").await;
    for round in 0..50u32 {
        let head = w.head;
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let update = format!(r#"{{"store":{k},"round":{round}}}"#);
                let event = build::completed(w.run.run_id, head + 1, round, "a", &update, None);
                let commit = build::append(&w.thread, head, vec![event]);
                let (s, barrier) = (s.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.commit(commit).await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await? {
                Ok(r) => {
                    assert_eq!(r.head, Seq(head + 1));
                    wins += 1;
                }
                Err(e) => assert_eq!(
                    e,
                    Error::Conflict {
                        thread_id: w.thread.clone(),
                        expected: Seq(head),
                        actual: Seq(head + 1)
                    }
                ),
            }
        }
        assert_eq!(wins, 1, "round {round}");
        w.head = head + 1;
    }
    let events = stores[1].events(&w.thread, Seq::ZERO, usize::MAX).await?;
    assert_eq!(events.len(), 51);
    Ok(())
}

/// 32 threads, each written by its own task through one of two stores, many commits each:
/// everything lands, and the pools really use many connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_threads_commit_in_parallel_through_two_pools() -> TestResult {
    let (a, _guard) = fresh(true).await;
    let b = PostgresStore::connect(&url(), options(a.schema(), true)).await?;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stores: [Arc<dyn Store>; 2] = [a.clone(), b.clone()];
    const COMMITS: u64 = 40;
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                let mut w = Writer::start(&*store, &format!("par-{i}")).await;
                for _ in 0..COMMITS {
                    w.steps(&*store, 1).await;
                }
                w.complete(&*store).await;
                w
            })
        })
        .collect();
    let mut writers = Vec::new();
    for t in tasks {
        writers.push(t.await?);
    }
    let elapsed = started.elapsed();
    for w in &writers {
        let events = stores[0].events(&w.thread, Seq::ZERO, usize::MAX).await?;
        assert_eq!(events.len() as u64, COMMITS + 2, "thread {}", w.thread);
    }
    let (open_a, _, _) = a.pool_status();
    let (open_b, _, _) = b.pool_status();
    assert!(
        open_a > 4 && open_b > 4,
        "the pools opened {open_a} and {open_b} connections: commits were not parallel"
    );
    assert!(
        stores[0].runs(&RunFilter::unfinished()).await?.is_empty(),
        "every run completed"
    );
    eprintln!(
        "{} commits in {elapsed:?} over {open_a}+{open_b} connections",
        32 * (COMMITS + 2)
    );
    Ok(())
}

/// A commit through one store wakes a listener of another within milliseconds; so do
/// deliveries and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_arrive_within_milliseconds() -> TestResult {
    let (a, _guard) = fresh(true).await;
    let b = PostgresStore::connect(&url(), options(a.schema(), true)).await?;
    let mut listener = b.listen_ready().await?;
    let mut next = async || loop {
        match tokio::time::timeout(Duration::from_secs(5), listener.recv()).await {
            Ok(Some(Wake::Changed(t))) if !t.as_str().starts_with("oris-listen-probe") => {
                return t;
            }
            Ok(Some(_)) => continue,
            other => panic!("no wake-up within 5 s: {other:?}"),
        }
    };
    let sent = Instant::now();
    let mut w = Writer::start(&a, "woken").await;
    let committed = sent.elapsed();
    let heard = next().await;
    let latency = sent.elapsed();
    assert_eq!(heard.as_str(), "woken");
    assert!(
        latency < committed + Duration::from_millis(500),
        "heard after {latency:?} (commit took {committed:?})"
    );
    eprintln!("commit took {committed:?}, wake-up heard after {latency:?}");
    // An append without a status change sends nothing; a delivery does.
    w.steps(&a, 1).await;
    a.deliver(&w.thread, "paid", build::payload("{}"), None, build::at(1))
        .await?;
    assert_eq!(next().await.as_str(), "woken");
    w.complete(&a).await;
    assert_eq!(next().await.as_str(), "woken");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_without_the_password() {
    // A port nothing listens on (the port of the test server plus one is not guaranteed
    // free, so use a reserved one).
    let url = "postgres://oris:hunter2-secret@127.0.0.1:1/oris";
    let err = PostgresStore::connect(
        url,
        PostgresOptions {
            connect_timeout: Duration::from_secs(2),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(
        msg.contains("postgres://oris:***@127.0.0.1:1/oris"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_without_echoing_it() {
    // The test server trusts everyone, so use a role that does not exist instead: the
    // message must still not contain the password.
    let base = url();
    let rest = base.split_once("://").map(|(_, r)| r).unwrap_or(&base);
    let host = rest.split_once('@').map(|(_, h)| h).unwrap_or(rest);
    let url = format!("postgres://nobody_here:hunter2-secret@{host}");
    let err = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("nobody_here:***@"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_rows_are_corrupt_naming_thread_seq_and_column() -> TestResult {
    let (store, guard) = fresh(true).await;
    let schema = guard.schema.clone();
    let mut w = Writer::start(&store, "damaged").await;
    w.steps(&store, 2).await;
    let t = w.thread.clone();

    raw(
        &schema,
        "UPDATE events SET data = '{not json' WHERE seq = 2",
    )
    .await;
    let err = store.events(&t, Seq::ZERO, 10).await.unwrap_err();
    match &err {
        Error::Corrupt {
            thread_id,
            seq,
            detail,
        } => {
            assert_eq!(thread_id, &t);
            assert_eq!(*seq, Some(Seq(2)));
            assert!(detail.contains("`data`"), "{detail}");
        }
        other => panic!("{other:?}"),
    }

    raw(
        &schema,
        "UPDATE events SET data = '{}' WHERE seq = 2;
         ALTER TABLE events DROP CONSTRAINT events_kind_check;
         UPDATE events SET kind = 99 WHERE seq = 3",
    )
    .await;
    let err = store.events(&t, Seq(2), 10).await.unwrap_err().to_string();
    assert!(
        err.contains("unknown event kind code 99") && err.contains("seq 3"),
        "{err}"
    );

    raw(&schema, "DELETE FROM events WHERE seq = 2").await;
    let err = store
        .events(&t, Seq::ZERO, 10)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("gap"), "{err}");

    raw(
        &schema,
        "ALTER TABLE runs DROP CONSTRAINT runs_status_check;
         UPDATE runs SET status = 'sleeping'",
    )
    .await;
    let err = store.run(w.run.run_id).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { thread_id, .. } if *thread_id == t),
        "{err:?}"
    );
    assert!(err.to_string().contains("`status`"), "{err}");
    // A commit reading the damaged run refuses too, and writes nothing.
    let head = w.head;
    let commit = build::finish(
        &t,
        head,
        w.run.run_id,
        build::status_completed(head + 1),
        vec![],
    );
    assert!(matches!(
        store.commit(commit).await,
        Err(Error::Corrupt { .. })
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_runs_are_found_by_their_index() -> TestResult {
    let (store, guard) = fresh(true).await;
    let mut w = Writer::start(&store, "indexed").await;
    w.complete(&store).await;
    let plan = raw_query(
        &guard.schema,
        "SET enable_seqscan = off; EXPLAIN SELECT r.run_id FROM runs r
         WHERE r.status IN ('queued', 'running', 'interrupted', 'waiting')
         ORDER BY r.run_id LIMIT 10",
    )
    .await
    .join("\n");
    assert!(plan.contains("runs_unfinished"), "{plan}");
    Ok(())
}

/// Restarting the server breaks every pooled connection and the listener; the next
/// operations succeed on fresh connections and the listener reports its reconnection.
/// Needs `ORIS_TEST_PG_DATA` (the cluster's data directory, set by `scripts/test.sh`) and
/// permission to run `pg_ctl` as its owner. It must run alone (every other test's
/// connections break too): nextest's default filter (`.config/nextest.toml`) leaves it out of
/// the main run, and `scripts/test.sh` runs it by itself after the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_succeed_after_the_server_restarts() -> TestResult {
    let Ok(data) = std::env::var("ORIS_TEST_PG_DATA") else {
        panic!(
            "ORIS_TEST_PG_DATA is not set: this test restarts the throwaway server of \
             ./scripts/test.sh; run it through that script"
        );
    };
    let (store, _guard) = fresh(true).await;
    let mut w = Writer::start(&store, "restart").await;
    let mut listener = store.listen_ready().await?;
    // Fill the pool with several connections.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { Writer::start(&s, &format!("warm-{i}")).await })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let status = std::process::Command::new("runuser")
        .args([
            "-u", "postgres", "--", "pg_ctl", "-D", &data, "-m", "fast", "-w", "restart",
        ])
        .env("PATH", pg_path())
        .stdout(std::process::Stdio::null())
        .status()?;
    assert!(status.success(), "pg_ctl restart failed");
    // Every pooled connection is now dead; the next operations must still succeed.
    w.steps(&store, 1).await;
    assert_eq!(store.thread(&w.thread).await?.unwrap().head, Seq(w.head));
    w.complete(&store).await;
    // The listener reconnects and says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), listener.recv()).await? {
            Some(Wake::Reconnected) => break,
            Some(_) => assert!(Instant::now() < deadline, "no reconnection reported"),
            None => panic!("listener stopped"),
        }
    }
    Ok(())
}

/// `PATH` with the PostgreSQL binaries (Debian keeps them out of `PATH`).
fn pg_path() -> String {
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        for d in dirs.flatten() {
            path = format!("{}/bin:{path}", d.path().display());
        }
    }
    path
}
