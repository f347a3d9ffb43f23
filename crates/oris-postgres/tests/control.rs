//! PostgreSQL-specific behaviour of the control-plane data: migrating version 1 and 2
//! databases in place, the claim and reaper statements' indexes, claimers and reapers that
//! skip locked runs instead of waiting, two pools claiming one queue, answers and
//! deliveries racing suspensions across connections, wake-ups on release and reap, and
//! metadata filters with awkward keys.
//!
//! Needs `ORIS_TEST_PG_URL`; see `support`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oris_core::event::Payload;
use oris_core::id::{InterruptId, RunId, ThreadId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{PendingRun, RunFilter, RunRecord, Store, WorkerRecord};
use oris_postgres::{MIGRATIONS, PostgresStore, SCHEMA_VERSION, Wake};
use oris_testkit::build::{self, GRAPH, GRAPH_VERSION};
use oris_testkit::writer::Writer;
use support::{SchemaGuard, fresh, fresh_schema, options, raw, raw_query, url};
use tokio::sync::Barrier;
use tokio_postgres::{Client, NoTls};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MINUTE: Duration = Duration::from_secs(60);

/// A connection of its own (not the store's pool), with its driver running.
async fn client() -> Client {
    let (client, conn) = tokio_postgres::connect(&url(), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// Creates a queued run on a new thread `thread` (no events), created at `created`.
async fn enqueue(s: &dyn Store, thread: &str, created: Timestamp, priority: i32) -> RunRecord {
    let t = build::thread_id(thread);
    let run = build::queued_run(&t, GRAPH, GRAPH_VERSION, created, priority, None);
    s.commit(build::create(&run, vec![]))
        .await
        .expect("enqueue");
    s.run(run.run_id).await.expect("read").expect("stored")
}

fn status_json(status: &RunStatus) -> (String, String) {
    let (kind, data) = status.to_columns().expect("status columns");
    (kind.to_owned(), data)
}

/// A database left at schema version 1 with runs in every status migrates in place when
/// a store connects: the new columns have their defaults (priority 0, no metadata, never
/// leased), and `ready_at` is backfilled by the readiness rules — a queued run is ready
/// since its creation, a waiting one at its timer or the earliest pending delivery it waits
/// for, an interrupted one whose open interrupts are all answered at the last answer;
/// running, unanswered and finished runs are not ready. Everything else reads as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_migrates_in_place() -> TestResult {
    let schema = fresh_schema();
    let _guard = SchemaGuard {
        url: url(),
        schema: schema.clone(),
    };
    let quoted = format!("\"{schema}\".");
    raw(
        &schema,
        &format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE oris_schema_migrations (
                 version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
             {}
             INSERT INTO oris_schema_migrations (version) VALUES (1);",
            MIGRATIONS[0].replace("{S}.", &quoted)
        ),
    )
    .await;

    let db = client().await;
    db.batch_execute(&format!("SET search_path TO \"{schema}\""))
        .await?;
    // One thread per run; returns the run id.
    let add_run =
        async |thread: &str, status: &RunStatus, created: i64, wake: Option<i64>| {
            let (kind, data) = status_json(status);
            let run_id = RunId::generate();
            let row = db
                .query_one(
                    "INSERT INTO threads (thread_id, graph, head, created_at, updated_at)
                 VALUES ($1, 'g', 1, $2, $2) RETURNING key",
                    &[&thread, &created],
                )
                .await
                .expect("thread");
            let thread_key: i64 = row.get(0);
            let row = db
            .query_one(
                "INSERT INTO runs (run_id, thread_key, graph, graph_version, status, status_data,
                                   first_seq, created_at, updated_at, wake_at)
                 VALUES ($1, $2, 'g', 'v1', $3, $4, 1, $5, $5, $6) RETURNING key",
                &[&run_id.as_uuid(), &thread_key, &kind, &data, &created, &wake],
            )
            .await
            .expect("run");
            let run_key: i64 = row.get(0);
            db.execute(
                "UPDATE threads SET active_run_key = $2, last_run_key = $2 WHERE key = $1",
                &[&thread_key, &run_key],
            )
            .await
            .expect("active run");
            (run_id, thread_key, run_key)
        };
    let add_interrupt = async |thread_key: i64, run_key: i64, answered: Option<i64>| {
        let id = InterruptId::generate();
        db.execute(
            "INSERT INTO interrupts (interrupt_id, thread_key, run_key, node, payload,
                                     raised_seq, raised_at, answer, answered_at)
             VALUES ($1, $2, $3, 'ask', '{}', 1, 1, $4, $5)",
            &[
                &id.as_uuid(),
                &thread_key,
                &run_key,
                &answered.map(|_| "true"),
                &answered,
            ],
        )
        .await
        .expect("interrupt");
        id
    };
    let add_delivery = async |thread_key: i64, name: &str, sent: i64, consumed: Option<i64>| {
        db.execute(
            "INSERT INTO deliveries (delivery_id, thread_key, name, payload, sent_at, consumed_seq)
             VALUES ($1, $2, $3, '{}', $4, $5)",
            &[&uuid::Uuid::now_v7(), &thread_key, &name, &sent, &consumed],
        )
        .await
        .expect("delivery");
    };

    let (queued, ..) = add_run("queued", &RunStatus::Queued, 100, None).await;
    let (running, ..) = add_run("running", &RunStatus::Running, 101, None).await;
    let waiting = build::status_waiting(Some(Timestamp(500)), &["paid", "shipped"]);
    let (woken, tk, _) = add_run("woken", &waiting, 102, Some(500)).await;
    add_delivery(tk, "other", 200, None).await;
    add_delivery(tk, "paid", 250, Some(1)).await;
    add_delivery(tk, "shipped", 300, None).await;
    add_delivery(tk, "paid", 350, None).await;
    let (sleeping, tk, _) = add_run("sleeping", &waiting, 103, Some(500)).await;
    add_delivery(tk, "other", 200, None).await;
    let events_only = build::status_waiting(None, &["paid"]);
    let (idle, ..) = add_run("idle", &events_only, 104, None).await;
    let pending = build::pending(InterruptId::generate(), "ask", "{}");
    let interrupted = build::status_interrupted(vec![pending]);
    let (answered, tk, rk) = add_run("answered", &interrupted, 105, None).await;
    add_interrupt(tk, rk, Some(60)).await;
    add_interrupt(tk, rk, Some(40)).await;
    let (unanswered, tk, rk) = add_run("unanswered", &interrupted, 106, None).await;
    add_interrupt(tk, rk, Some(60)).await;
    add_interrupt(tk, rk, None).await;
    let (done, ..) = add_run("done", &build::status_completed(1), 107, None).await;

    let store = PostgresStore::connect(&url(), options(&schema, true)).await?;
    let versions = raw_query(
        &schema,
        "SELECT version FROM oris_schema_migrations ORDER BY version",
    )
    .await;
    let every: Vec<String> = (1..=SCHEMA_VERSION).map(|v| v.to_string()).collect();
    assert_eq!(versions, every);

    // Version 2 backfills readiness by the rules (a waiting run at its timer or first
    // awaited delivery, an answered one at its last answer); version 3 then clears it for
    // runs the library drives — every run of a version-1 database, which had no server —
    // so only the queued run is ready.
    for (run, ready) in [
        (queued, Some(100)),
        (running, None),
        (woken, None),
        (sleeping, None),
        (idle, None),
        (answered, None),
        (unanswered, None),
        (done, None),
    ] {
        let r = store.run(run).await?.expect("the run reads back");
        assert_eq!(
            r.ready_at,
            ready.map(Timestamp),
            "ready_at of {}",
            r.thread_id
        );
        assert_eq!(
            (r.priority, &r.metadata, r.lease_epoch, &r.lease),
            (0, &None, 0, &None),
            "defaults of {}",
            r.thread_id
        );
    }
    // The migrated queue works: only the queued run is claimed.
    let claimed = store
        .claim(&build::claim_request("w", Timestamp(1_000), MINUTE, 10))
        .await?;
    let ids: Vec<RunId> = claimed.iter().map(|r| r.run_id).collect();
    assert_eq!(ids, vec![queued]);
    Ok(())
}

/// A database left at schema version 2 migrates in place when a store connects: its
/// leased runs are in the new lease index by their lease columns alone (lease counts and
/// the reaper find them; the reaper keeps the epoch), and the worker registry works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_database_migrates_in_place() -> TestResult {
    let schema = fresh_schema();
    let _guard = SchemaGuard {
        url: url(),
        schema: schema.clone(),
    };
    let quoted = format!("\"{schema}\".");
    raw(
        &schema,
        &format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE oris_schema_migrations (
                 version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
             {}
             {}
             INSERT INTO oris_schema_migrations (version) VALUES (1), (2);",
            MIGRATIONS[0].replace("{S}.", &quoted),
            MIGRATIONS[1].replace("{S}.", &quoted)
        ),
    )
    .await;
    let (kind, data) = status_json(&RunStatus::Running);
    // Three running runs: leased until 5,000 (epoch 3), until 50,000 (epoch 1), unleased.
    raw(
        &schema,
        &format!(
            "INSERT INTO threads (thread_id, graph, head, created_at, updated_at)
             VALUES ('old', 'g', 0, 1, 1), ('live', 'g', 0, 2, 2), ('free', 'g', 0, 3, 3);
             INSERT INTO runs (run_id, thread_key, graph, graph_version, status, status_data,
                               first_seq, created_at, updated_at, ready_at, lease_epoch,
                               lease_worker, lease_expires)
             SELECT gen_random_uuid(), t.key, 'g', 'v1', '{kind}', '{data}', 1, t.created_at,
                    t.created_at, v.expires, v.epoch, v.worker, v.expires
             FROM threads t
             JOIN (VALUES ('old', 5000::bigint, 3::bigint, 'w-old'),
                          ('live', 50000, 1, 'w-live'),
                          ('free', NULL, 0, NULL)) AS v (thread, expires, epoch, worker)
               ON v.thread = t.thread_id;
             UPDATE threads t SET active_run_key = r.key, last_run_key = r.key
             FROM runs r WHERE r.thread_key = t.key;"
        ),
    )
    .await;
    // A run the library drives (never leased) that version 2 made ready: version 3 takes
    // that back (a server must not claim it).
    raw(
        &schema,
        &format!(
            "INSERT INTO threads (thread_id, graph, head, created_at, updated_at)
             VALUES ('lib', 'g', 0, 4, 4);
             INSERT INTO runs (run_id, thread_key, graph, graph_version, status, status_data,
                               first_seq, created_at, updated_at, ready_at, lease_epoch)
             SELECT gen_random_uuid(), t.key, 'g', 'v1', '{kind}', '{data}', 1, 4, 4, 700, 0
             FROM threads t WHERE t.thread_id = 'lib';
             UPDATE threads t SET active_run_key = r.key, last_run_key = r.key
             FROM runs r WHERE r.thread_key = t.key AND t.thread_id = 'lib';"
        ),
    )
    .await;

    let store = PostgresStore::connect(&url(), options(&schema, true)).await?;
    let lib = store
        .runs(&RunFilter {
            thread_id: Some(build::thread_id("lib")),
            ..Default::default()
        })
        .await?;
    assert_eq!(lib.len(), 1);
    assert_eq!(lib[0].ready_at, None, "a library run is not ready after v3");
    let versions = raw_query(
        &schema,
        "SELECT version FROM oris_schema_migrations ORDER BY version",
    )
    .await;
    let every: Vec<String> = (1..=SCHEMA_VERSION).map(|v| v.to_string()).collect();
    assert_eq!(versions, every);

    assert_eq!(
        store.lease_counts(Timestamp(1_000)).await?,
        vec![("g".to_owned(), 2)]
    );
    assert_eq!(
        store.lease_counts(Timestamp(10_000)).await?,
        vec![("g".to_owned(), 1)]
    );
    let reaped = store.reap_leases(Timestamp(10_000), 10).await?;
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    let r = &reaped[0];
    assert_eq!(
        (
            r.thread_id.as_str(),
            r.lease_epoch,
            &r.lease,
            r.ready_at,
            &r.status
        ),
        ("old", 3, &None, Some(Timestamp(5_000)), &RunStatus::Running)
    );
    assert_eq!(store.run(r.run_id).await?.as_ref(), Some(r));

    assert_eq!(store.workers().await?, vec![]);
    let w = WorkerRecord {
        worker_id: "w-new".into(),
        graphs: vec![("g".into(), "v1".into())],
        capacity: 2,
        registered_at: Timestamp(20_000),
        last_seen: Timestamp(20_000),
        stopped_at: None,
    };
    store.register_worker(&w).await?;
    assert!(store.touch_worker("w-new", Timestamp(21_000)).await?);
    assert_eq!(
        store.workers().await?,
        vec![WorkerRecord {
            last_seen: Timestamp(21_000),
            ..w
        }]
    );

    // The pending runs of `enqueue` arrive with version 3 too.
    let live = ThreadId::new("live")?;
    let pending = |n: i64| PendingRun {
        run_id: RunId::generate(),
        thread_id: live.clone(),
        position: 0,
        graph: "g".into(),
        graph_version: "v1".into(),
        request: Payload::encode(&n).unwrap(),
        created_at: Timestamp(30_000 + n),
    };
    let (a, b) = (pending(1), pending(2));
    assert_eq!(store.push_pending(&a).await?, 1);
    assert_eq!(store.push_pending(&b).await?, 2);
    assert_eq!(
        store.pending_runs(&live).await?,
        vec![
            PendingRun { position: 1, ..a },
            PendingRun { position: 2, ..b }
        ]
    );
    assert_eq!(
        store.pending_threads(10).await?,
        vec![],
        "thread `live` has an unfinished run"
    );
    Ok(())
}

/// `count` queued runs on threads of their own, ready at 1…, half of them at priority 1,
/// plus as many not ready yet (leased far into the future): what a busy queue looks like.
async fn fill_queue(schema: &str, count: u32) {
    let (kind, data) = status_json(&RunStatus::Queued);
    raw(
        schema,
        &format!(
            "INSERT INTO threads (thread_id, graph, head, created_at, updated_at)
             SELECT 'bulk-' || g, 'g', 0, g, g FROM generate_series(1, {n}) g;
             INSERT INTO runs (run_id, thread_key, graph, graph_version, status, status_data,
                               first_seq, created_at, updated_at, priority, ready_at,
                               lease_epoch, lease_worker, lease_expires)
             SELECT gen_random_uuid(), t.key, 'g', 'v1', '{kind}', '{data}', 1, t.created_at,
                    t.created_at, (t.created_at % 2)::int,
                    CASE WHEN t.created_at > {half} THEN 10000000 ELSE t.created_at END,
                    CASE WHEN t.created_at > {half} THEN 1 ELSE 0 END,
                    CASE WHEN t.created_at > {half} THEN 'busy' END,
                    CASE WHEN t.created_at > {half} THEN 10000000 END
             FROM threads t WHERE t.thread_id LIKE 'bulk-%';
             ANALYZE",
            n = count * 2,
            half = count,
        ),
    )
    .await;
}

/// The claim statement, with and without the graph filter, under the generic plan a
/// cached statement ends up with and a custom plan for its values, reads ready runs in
/// claim order from the index `runs_claim` and finds the rows to update by key — it never
/// scans the runs table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_served_by_the_claim_index() -> TestResult {
    let (store, guard) = fresh(true).await;
    fill_queue(&guard.schema, 2_000).await;
    let db = client().await;
    for (with_graphs, types, args) in [
        (
            false,
            "bigint, bigint, text, bigint, text",
            "500, 5, 'w', 600, '{}'",
        ),
        (
            true,
            "bigint, bigint, text, bigint, text, text[], text[]",
            "500, 5, 'w', 600, '{}', '{g}', '{v1}'",
        ),
    ] {
        db.batch_execute(&format!(
            "DEALLOCATE ALL; PREPARE claim ({types}) AS {}",
            store.claim_statement(with_graphs)
        ))
        .await?;
        for mode in ["force_generic_plan", "force_custom_plan"] {
            db.batch_execute(&format!("SET plan_cache_mode = {mode}"))
                .await?;
            let plan: Vec<String> = db
                .simple_query(&format!("EXPLAIN EXECUTE claim ({args})"))
                .await?
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some(r.get(0).unwrap_or("").to_owned())
                    }
                    _ => None,
                })
                .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains("Index Scan using runs_claim"),
                "{mode}:\n{plan}"
            );
            assert!(!plan.contains("Seq Scan"), "{mode}:\n{plan}");
            // The runs to claim come in claim order from the index (the only sort may be
            // of the few picked keys, to join them).
            let pick = plan
                .split("CTE c")
                .nth(1)
                .and_then(|rest| rest.split("InitPlan").next())
                .unwrap_or_default();
            assert!(pick.contains("runs_claim"), "{mode}:\n{plan}");
            assert!(
                !pick.contains("Sort"),
                "{mode}: served in index order\n{plan}"
            );
        }
    }
    // And it claims the most urgent ready runs: priority 1 first, earliest first.
    let got = store
        .claim(&build::claim_request("w", Timestamp(500), MINUTE, 3))
        .await?;
    let created: Vec<i64> = got.iter().map(|r| r.created_at.0).collect();
    assert_eq!(created, vec![1, 3, 5]);
    Ok(())
}

/// The reaper's statement, under the generic plan a cached statement ends up with and a
/// custom plan for its values, reads the expired leases in expiry order from the index
/// `runs_leased` — never the claim index or a scan of the runs, however large the queue of
/// ready runs — and lease counts read the live leases from it when, as in a real queue,
/// few runs are leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_and_lease_counts_are_served_by_the_lease_index() -> TestResult {
    let (store, guard) = fresh(true).await;
    // 2,000 ready queued runs, and 2,000 leased until 10,000,000 by `busy`.
    fill_queue(&guard.schema, 2_000).await;
    let db = client().await;
    let explain = async |sql: &str| -> Vec<String> {
        db.simple_query(sql)
            .await
            .expect("explain")
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or("").to_owned())
                }
                _ => None,
            })
            .collect()
    };
    db.batch_execute(&format!(
        "SET search_path TO \"{}\"; PREPARE reap (bigint, bigint) AS {}",
        guard.schema,
        store.reap_statement()
    ))
    .await?;
    for mode in ["force_generic_plan", "force_custom_plan"] {
        db.batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .await?;
        let plan = explain("EXPLAIN EXECUTE reap (20000000, 5)")
            .await
            .join("\n");
        let pick = plan
            .split("CTE c")
            .nth(1)
            .and_then(|rest| rest.split("InitPlan").next())
            .unwrap_or_default();
        assert!(pick.contains("runs_leased"), "{mode}:\n{plan}");
        assert!(
            !pick.contains("Sort"),
            "{mode}: served in index order\n{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{mode}:\n{plan}");
        assert!(!plan.contains("runs_claim"), "{mode}:\n{plan}");
    }
    db.batch_execute("SET plan_cache_mode = auto").await?;
    // As in a real queue, few runs are leased (live): 100 of the 4,000.
    raw(
        &guard.schema,
        "UPDATE runs SET lease_worker = NULL, lease_expires = NULL, ready_at = created_at
         WHERE lease_worker IS NOT NULL AND created_at > 2100;
         ANALYZE",
    )
    .await;
    let plan = explain(
        "EXPLAIN SELECT r.graph, count(*) FROM runs r
         WHERE r.lease_worker IS NOT NULL AND r.lease_expires > 500
         GROUP BY r.graph",
    )
    .await
    .join("\n");
    assert!(plan.contains("runs_leased"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");

    assert_eq!(
        store.lease_counts(Timestamp(500)).await?,
        vec![("g".to_owned(), 100)]
    );
    let reaped = store.reap_leases(Timestamp(10_000_000), 3).await?;
    assert_eq!(reaped.len(), 3);
    assert!(
        reaped
            .iter()
            .all(|r| r.lease.is_none() && r.lease_epoch == 1)
    );
    assert_eq!(
        store.lease_counts(Timestamp(500)).await?,
        vec![("g".to_owned(), 97)]
    );
    Ok(())
}

/// A reaper skips leases another transaction holds (a renewal, a commit on the run)
/// instead of waiting for them, and the threads of the runs it reaps wake listeners (the
/// runs are claimable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapers_skip_locked_runs_and_wake_listeners() -> TestResult {
    let (store, guard) = fresh(false).await;
    let a = enqueue(&store, "reap-locked-a", build::at(1), 0).await;
    let b = enqueue(&store, "reap-locked-b", build::at(2), 0).await;
    let claimed = store
        .claim(&build::claim_request("w", build::at(10), MINUTE, 2))
        .await?;
    assert_eq!(claimed.len(), 2);
    let other = PostgresStore::connect(&url(), options(&guard.schema, false)).await?;
    let mut listener = other.listen_ready().await?;
    let holder = client().await;
    holder
        .batch_execute(&format!(
            "SET search_path TO \"{}\"; BEGIN;
             SELECT 1 FROM runs WHERE run_id = '{}' FOR NO KEY UPDATE",
            guard.schema,
            a.run_id.as_uuid()
        ))
        .await?;
    let later = Timestamp(build::at(10).0 + 2 * 60_000);
    let got = tokio::time::timeout(Duration::from_secs(5), store.reap_leases(later, 10))
        .await
        .expect("the reap did not wait for the locked run")?;
    let ids: Vec<RunId> = got.iter().map(|r| r.run_id).collect();
    assert_eq!(ids, vec![b.run_id]);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), listener.recv()).await {
            Ok(Some(Wake::Changed(t))) if t == b.thread_id => break,
            Ok(Some(_)) => continue,
            other => panic!("no wake-up for the reaped run within 5 s: {other:?}"),
        }
    }
    holder.batch_execute("ROLLBACK").await?;
    let got = store.reap_leases(later, 10).await?;
    let ids: Vec<RunId> = got.iter().map(|r| r.run_id).collect();
    assert_eq!(ids, vec![a.run_id], "once the lock is gone");
    Ok(())
}

/// A claimer skips runs another transaction holds (a commit on the run, another claim)
/// instead of waiting for them: with the first run in claim order locked by an open
/// transaction elsewhere, a claim returns the next ones at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimers_skip_locked_runs_instead_of_waiting() -> TestResult {
    let (store, guard) = fresh(false).await;
    let a = enqueue(&store, "locked-a", build::at(1), 0).await;
    let b = enqueue(&store, "locked-b", build::at(2), 0).await;
    let c = enqueue(&store, "locked-c", build::at(3), 0).await;
    let holder = client().await;
    holder
        .batch_execute(&format!(
            "SET search_path TO \"{}\"; BEGIN;
             SELECT 1 FROM runs WHERE run_id = '{}' FOR NO KEY UPDATE",
            guard.schema,
            a.run_id.as_uuid()
        ))
        .await?;
    let started = Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        store.claim(&build::claim_request("w", build::at(10), MINUTE, 2)),
    )
    .await
    .expect("the claim did not wait for the locked run")?;
    let ids: Vec<RunId> = got.iter().map(|r| r.run_id).collect();
    assert_eq!(ids, vec![b.run_id, c.run_id]);
    eprintln!("claim past a locked run took {:?}", started.elapsed());
    holder.batch_execute("ROLLBACK").await?;
    let got = store
        .claim(&build::claim_request("w", build::at(10), MINUTE, 2))
        .await?;
    assert_eq!(
        got.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        vec![a.run_id],
        "once unlocked, the first run is claimed"
    );
    Ok(())
}

/// Two pools (two processes) with eight claimers each drain a queue of 120 runs: every
/// run is claimed exactly once, at epoch 1, by the claimer that got it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_claim_each_run_exactly_once() -> TestResult {
    let (a, _guard) = fresh(true).await;
    let b = PostgresStore::connect(&url(), options(a.schema(), false)).await?;
    let stores: [Arc<dyn Store>; 2] = [Arc::new(a), Arc::new(b)];
    let mut queued = BTreeSet::new();
    for i in 0..120 {
        queued.insert(
            enqueue(&*stores[0], &format!("pool-{i}"), build::at(i), 0)
                .await
                .run_id,
        );
    }
    let barrier = Arc::new(Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, barrier) = (stores[i % 2].clone(), barrier.clone());
            tokio::spawn(async move {
                let worker = format!("w{i}");
                barrier.wait().await;
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .claim(&build::claim_request(&worker, build::at(1_000), MINUTE, 3))
                        .await
                        .expect("claim");
                    if got.is_empty() {
                        return (worker, mine);
                    }
                    mine.extend(got);
                }
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for t in tasks {
        let (worker, mine) = t.await?;
        for r in mine {
            assert!(seen.insert(r.run_id), "run {} claimed twice", r.run_id);
            assert_eq!(r.lease_epoch, 1);
            assert_eq!(
                r.lease.as_ref().map(|l| l.worker_id.as_str()),
                Some(&*worker)
            );
            let stored = stores[0].run(r.run_id).await?.expect("stored");
            assert_eq!(stored, r, "the stored record is the returned one");
        }
    }
    assert_eq!(seen, queued, "every run claimed");
    Ok(())
}

/// Thread `thread` with a run driven by workers (queued with a graph version of its own,
/// then claimed: running, epoch 1), the only kind of run that answers and deliveries make
/// claimable.
async fn start_claimed(s: &dyn Store, thread: &str) -> Writer {
    let t = ThreadId::new(thread).expect("thread id");
    let queued = build::queued_run(&t, GRAPH, thread, build::at(1), 0, None);
    s.commit(build::create(&queued, vec![]))
        .await
        .expect("enqueue");
    let request = oris_core::store::ClaimRequest {
        graphs: vec![(GRAPH.to_owned(), thread.to_owned())],
        ..build::claim_request("w0", Timestamp::now(), Duration::from_secs(3600), 1)
    };
    let claimed = s.claim(&request).await.expect("claim");
    assert_eq!(claimed.len(), 1, "the queued run is claimed");
    Writer {
        thread: t,
        run: claimed[0].clone(),
        head: 0,
    }
}

/// An answer and the commit that suspends the run (driven by workers) on that interrupt,
/// sent at the same time through two pools, in either order: the run always ends up
/// interrupted and ready since the answer (whichever transaction came second saw the
/// other's write).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_racing_suspensions_always_make_the_run_ready() -> TestResult {
    let (a, _guard) = fresh(true).await;
    let b = PostgresStore::connect(&url(), options(a.schema(), true)).await?;
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(a), Arc::new(b));
    for round in 0..30 {
        let mut w = start_claimed(&*a, &format!("answer-race-{round}")).await;
        let (r, head, i) = (w.run.run_id, w.head, InterruptId::generate());
        let raised = build::append(
            &w.thread,
            head,
            vec![build::interrupt_raised(r, head + 1, "ask", i, "{}")],
        );
        w.commit(&*a, raised).await;
        let suspend = build::set_status(
            &w.thread,
            w.head,
            r,
            build::status_interrupted(vec![build::pending(i, "ask", "{}")]),
            vec![build::run_suspended(r, w.head + 1, &[i], None, &[])],
        );
        let barrier = Arc::new(Barrier::new(2));
        let (s1, b1) = (a.clone(), barrier.clone());
        let commit = tokio::spawn(async move {
            b1.wait().await;
            s1.commit(suspend).await
        });
        let (s2, b2) = (b.clone(), barrier.clone());
        let answer = tokio::spawn(async move {
            b2.wait().await;
            s2.answer_interrupt(i, build::payload("true"), build::at(7))
                .await
        });
        commit.await?.expect("the suspension commits");
        answer.await?.expect("the answer is recorded");
        let run = a.run(r).await?.expect("stored");
        assert!(matches!(run.status, RunStatus::Interrupted { .. }));
        assert_eq!(run.ready_at, Some(build::at(7)), "round {round}");
    }
    Ok(())
}

/// A delivery and the commit that suspends the run (driven by workers) waiting for it, at
/// the same time through two pools: the run always ends up waiting and ready since the
/// delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_racing_suspensions_always_make_the_run_ready() -> TestResult {
    let (a, _guard) = fresh(false).await;
    let b = PostgresStore::connect(&url(), options(a.schema(), false)).await?;
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(a), Arc::new(b));
    for round in 0..30 {
        let w = start_claimed(&*a, &format!("delivery-race-{round}")).await;
        let (r, head) = (w.run.run_id, w.head);
        let suspend = build::set_status(
            &w.thread,
            head,
            r,
            build::status_waiting(Some(build::at(900)), &["paid"]),
            vec![build::run_suspended(
                r,
                head + 1,
                &[],
                Some(build::at(900)),
                &["paid"],
            )],
        );
        let barrier = Arc::new(Barrier::new(2));
        let (s1, b1) = (a.clone(), barrier.clone());
        let commit = tokio::spawn(async move {
            b1.wait().await;
            s1.commit(suspend).await
        });
        let (s2, b2, t) = (b.clone(), barrier.clone(), w.thread.clone());
        let deliver = tokio::spawn(async move {
            b2.wait().await;
            s2.deliver(&t, "paid", build::payload("{}"), None, build::at(9))
                .await
        });
        commit.await?.expect("the suspension commits");
        deliver.await?.expect("the delivery is recorded");
        let run = a.run(r).await?.expect("stored");
        assert!(matches!(run.status, RunStatus::Waiting { .. }));
        assert_eq!(run.ready_at, Some(build::at(9)), "round {round}");
    }
    Ok(())
}

/// A new queued run and a released lease wake a listener of another pool at once (the
/// payload is the thread id), so a server's workers need not poll to find them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_and_releases_wake_listeners() -> TestResult {
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
    let q = enqueue(&a, "wake-queued", Timestamp::now(), 0).await;
    assert_eq!(next().await, q.thread_id, "a new queued run");
    let now = Timestamp::now();
    let claimed = a.claim(&build::claim_request("w", now, MINUTE, 1)).await?;
    assert_eq!(claimed.len(), 1);
    let fence = build::fence(q.run_id, 1);
    let released = a.release_lease(&fence, now).await?;
    assert_eq!(released.ready_at, Some(now));
    assert_eq!(next().await, q.thread_id, "a released run");
    Ok(())
}

/// Metadata filters bind keys and values as parameters: keys and values with quotes,
/// backslashes and SQL in them match exactly, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_filters_bind_awkward_keys() -> TestResult {
    let (store, _guard) = fresh(false).await;
    let odd = r#"{"it's \"odd\"":"a'; DROP TABLE runs; --","path\\key":"v"}"#;
    let t = build::thread_id("meta-odd");
    let run = build::queued_run(&t, GRAPH, GRAPH_VERSION, build::at(1), 0, Some(odd));
    store.commit(build::create(&run, vec![])).await?;
    let other = build::thread_id("meta-other");
    let plain = build::queued_run(&other, GRAPH, GRAPH_VERSION, build::at(2), 0, Some("{}"));
    store.commit(build::create(&plain, vec![])).await?;
    let filter = |pairs: &[(&str, &str)]| RunFilter {
        metadata: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..RunFilter::default()
    };
    let ids = async |f: RunFilter| -> Vec<RunId> {
        store
            .runs(&f)
            .await
            .expect("runs")
            .into_iter()
            .map(|r| r.run_id)
            .collect()
    };
    assert_eq!(
        ids(filter(&[(r#"it's "odd""#, "a'; DROP TABLE runs; --")])).await,
        vec![run.run_id]
    );
    assert_eq!(
        ids(filter(&[
            (r#"it's "odd""#, "a'; DROP TABLE runs; --"),
            ("path\\key", "v")
        ]))
        .await,
        vec![run.run_id]
    );
    assert_eq!(
        ids(filter(&[("path\\key", "w")])).await,
        Vec::<RunId>::new()
    );
    assert_eq!(ids(filter(&[("it's", "a")])).await, Vec::<RunId>::new());
    let stored = store.run(run.run_id).await?.expect("stored");
    assert_eq!(
        stored.metadata.as_ref().map(|m| m.json()),
        Some(odd),
        "metadata reads back byte for byte"
    );
    // Metadata that is not an object of strings matches no pair (as `metadata_map` says).
    let shapes = [
        r#"["path\\key"]"#,
        r#""v""#,
        r#"{"path\\key":"v","n":1}"#,
        "null",
    ];
    for (i, json) in shapes.into_iter().enumerate() {
        let t = build::thread_id(&format!("meta-shape-{i}"));
        let r = build::queued_run(&t, GRAPH, GRAPH_VERSION, build::at(3), 0, Some(json));
        store.commit(build::create(&r, vec![])).await?;
        assert_eq!(
            ids(filter(&[("path\\key", "v")])).await,
            vec![run.run_id],
            "metadata {json}"
        );
    }
    assert_eq!(
        ids(RunFilter::default()).await.len(),
        6,
        "every run is still there"
    );
    Ok(())
}
