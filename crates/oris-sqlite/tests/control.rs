//! The control-plane data on SQLite beyond the shared conformance cases: what a process
//! kill leaves of acknowledged claims, renewals, idempotency records and audit entries
//! (which are not fsynced on their own), claims grouped with commits, and the metadata
//! filter computed in SQL against the rule of `RunFilter::matches`.

mod support;

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::Duration;

use oris_core::event::{Durability, Payload};
use oris_core::id::{RunId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{
    AuditFilter, AuditRecord, ClaimRequest, Commit, Fence, IdempotencyRecord, Reservation,
    RunFilter, RunWrite, Store, StoredResponse,
};
use support::{Run, json, open};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The creation of a queued run on a new thread, with priority and metadata.
fn enqueue(thread: &str, priority: i32, metadata: Option<&str>, durability: Durability) -> Commit {
    let mut run = Run::new(thread, oris_core::id::Seq::ZERO);
    run.durability = durability;
    let mut c = run.start();
    if let Some(RunWrite::Create(r)) = &mut c.run {
        r.status = RunStatus::Queued;
        r.priority = priority;
        r.metadata = metadata.map(json);
    }
    c
}

fn run_id_of(c: &Commit) -> RunId {
    match &c.run {
        Some(RunWrite::Create(r)) => r.run_id,
        _ => unreachable!("an enqueue creates a run"),
    }
}

fn claim_request(worker: &str, now: i64, limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker_id: worker.into(),
        now: Timestamp(now),
        ttl: Duration::from_secs(60),
        limit,
        graphs: vec![],
    }
}

fn audit_entry(action: &str) -> AuditRecord {
    AuditRecord {
        id: 0,
        at: Timestamp(5),
        actor: "key-1".into(),
        role: "admin".into(),
        action: action.into(),
        target: Some("t".into()),
        request_id: "req".into(),
        status: 201,
        outcome: "ok".into(),
        details: Some(json(r#"{"n": [1, 2]}"#)),
    }
}

fn reservation(key: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: "key-1".into(),
        key: key.into(),
        request_hash: "h".into(),
        created_at: Timestamp::now(),
        expires_at: Timestamp::now().plus(Duration::from_secs(3600)),
        locked_until: Timestamp::now().plus(Duration::from_secs(3600)),
        response: None,
    }
}

const CHILD: &str = "ORIS_SQLITE_KILL_CHILD";
const ACKED: &str = "ACKED ";

/// The child's part: `Batched` run creations, then claims, a renewal, idempotency records
/// and audit entries — none fsynced — acknowledged on stdout, then it waits to be killed.
fn child(path: &str) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let store = open(std::path::Path::new(path)).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let c = enqueue(&format!("k{i}"), 0, None, Durability::Batched);
            ids.push(run_id_of(&c));
            store.commit(c).await.expect("the run is created");
        }
        let claimed = store
            .claim(&claim_request("w1", Timestamp::now().0, 2))
            .await
            .expect("claims");
        assert_eq!(claimed.len(), 2);
        let fence = Fence {
            run_id: claimed[0].run_id,
            epoch: 1,
        };
        let renewed = store
            .renew_lease(&fence, "w1", Timestamp::now(), Duration::from_secs(600))
            .await
            .expect("renews");
        let done = store
            .reserve_idempotency(&reservation("done"), Timestamp::now())
            .await
            .expect("reserves");
        assert_eq!(done, Reservation::Reserved);
        let response = StoredResponse {
            status: 201,
            body: r#"{"ok":true}"#.into(),
        };
        store
            .complete_idempotency("key-1", "done", &response)
            .await
            .expect("completes");
        store
            .reserve_idempotency(&reservation("open"), Timestamp::now())
            .await
            .expect("reserves");
        let a = store
            .append_audit(&audit_entry("a"))
            .await
            .expect("appends");
        let b = store
            .append_audit(&audit_entry("b"))
            .await
            .expect("appends");
        // Nothing above was fsynced: every group ran with synchronous=NORMAL.
        let stats = store.stats();
        assert_eq!(stats.synced_transactions, 0, "{stats:?}");
        println!(
            "{ACKED}{} {} {} {} {}",
            claimed[0].run_id,
            claimed[1].run_id,
            renewed.lease.as_ref().map_or(0, |l| l.expires_at.0),
            a,
            b
        );
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    })
}

/// What `synchronous=NORMAL` promises in WAL mode: a transaction whose `COMMIT` returned is
/// in the WAL file, so killing the process right after the acknowledgement loses nothing.
#[test]
fn acknowledged_control_writes_survive_a_sigkill() -> TestResult {
    if let Ok(path) = std::env::var(CHILD) {
        child(&path);
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("oris.db");
    let mut proc = std::process::Command::new(std::env::current_exe()?)
        .args([
            "acknowledged_control_writes_survive_a_sigkill",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = proc.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest may have printed `test … ... ` on the same line.
            if let Some(at) = line.find(ACKED) {
                let _ = tx.send(line[at + ACKED.len()..].to_owned());
            }
        }
    });
    let acked = rx.recv_timeout(Duration::from_secs(60));
    proc.kill()?; // SIGKILL
    let status = proc.wait()?;
    let acked = acked.map_err(|_| format!("the child never acknowledged ({status:?})"))?;
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
    let wal = std::fs::metadata(dir.path().join("oris.db-wal"))?;
    assert!(
        wal.len() > 0,
        "the kill left the WAL for the next open to replay"
    );

    let fields: Vec<&str> = acked.split(' ').collect();
    let first = fields[0].parse::<RunId>()?;
    let second = fields[1].parse::<RunId>()?;
    let expires: i64 = fields[2].parse()?;
    let audit_ids: Vec<u64> = vec![fields[3].parse()?, fields[4].parse()?];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = open(&path).await;
        let a = store.run(first).await?.ok_or("claimed run lost")?;
        assert_eq!(a.status, RunStatus::Running);
        assert_eq!(a.lease_epoch, 1);
        let lease = a.lease.ok_or("lease lost")?;
        assert_eq!(
            (lease.worker_id.as_str(), lease.expires_at.0),
            ("w1", expires)
        );
        assert_eq!(a.ready_at, Some(Timestamp(expires)), "renewal kept");
        let b = store.run(second).await?.ok_or("claimed run lost")?;
        assert_eq!((b.lease_epoch, b.lease.is_some()), (1, true));
        // Only the third run is left to claim.
        let left = store
            .claim(&claim_request("w2", Timestamp::now().0, 10))
            .await?;
        assert_eq!(left.len(), 1);
        assert!(left[0].run_id != first && left[0].run_id != second);
        assert_eq!(
            store
                .reserve_idempotency(&reservation("done"), Timestamp::now())
                .await?,
            Reservation::Replay(StoredResponse {
                status: 201,
                body: r#"{"ok":true}"#.into(),
            })
        );
        assert_eq!(
            store
                .reserve_idempotency(&reservation("open"), Timestamp::now())
                .await?,
            Reservation::InFlight
        );
        let audit = store.audit(&AuditFilter::default()).await?;
        assert_eq!(audit.iter().map(|r| r.id).collect::<Vec<_>>(), audit_ids);
        assert_eq!(audit[1].details, Some(json(r#"{"n": [1, 2]}"#)));
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// Claims queue with commits and with each other in the writer's groups: sixteen workers
/// claiming in small batches while runs are still being created get every run exactly once,
/// in priority order within each claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_and_creations_hand_out_every_run_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(open(&dir.path().join("oris.db")).await);
    let total = 300;
    let creators: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..total / 4 {
                    let c = enqueue(
                        &format!("c{t}-{i}"),
                        (i % 3) as i32,
                        None,
                        Durability::Batched,
                    );
                    ids.push(run_id_of(&c));
                    store.commit(c).await.expect("created");
                }
                ids
            })
        })
        .collect();
    let claimers: Vec<_> = (0..16)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 20 {
                    let runs = store
                        .claim(&claim_request(&format!("w{w}"), i64::MAX / 2, 3))
                        .await
                        .expect("claims");
                    let priorities: Vec<i32> = runs.iter().map(|r| r.priority).collect();
                    let mut sorted = priorities.clone();
                    sorted.sort_by(|a, b| b.cmp(a));
                    assert_eq!(priorities, sorted, "priority order within a claim");
                    if runs.is_empty() {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        idle = 0;
                    }
                    for r in runs {
                        assert_eq!(r.lease_epoch, 1);
                        assert_eq!(r.status, RunStatus::Running);
                        assert_eq!(
                            r.lease.as_ref().map(|l| l.worker_id.clone()),
                            Some(format!("w{w}"))
                        );
                        got.push(r.run_id);
                    }
                }
                got
            })
        })
        .collect();
    let mut created = Vec::new();
    for c in creators {
        created.extend(c.await?);
    }
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await?);
    }
    // Whatever the claimers gave up on (they stop after 20 empty claims) is claimed now.
    claimed.extend(
        store
            .claim(&claim_request("last", i64::MAX / 2, total))
            .await?
            .into_iter()
            .map(|r| r.run_id),
    );
    created.sort();
    claimed.sort();
    assert_eq!(claimed.len(), total, "no run claimed twice or lost");
    assert_eq!(claimed, created);
    let stats = store.stats();
    assert!(stats.transactions < stats.commits + 400, "{stats:?}");
    Ok(())
}

/// The metadata filter is computed in SQL; it must agree with `RunFilter::matches` (the
/// rule every backend follows), including keys that would break a JSON path, values that
/// are not strings, and metadata that is not an object of strings (which has no labels).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_filters_agree_with_the_rule() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir.path().join("oris.db")).await;
    let metadata = [
        None,
        Some(r#"{"team":"a","env":"prod"}"#),
        Some(r#"{"team":"b","env":"prod"}"#),
        Some(r#"{"team":"a"}"#),
        Some(r#"{"a\"b":"q\"uote","$.x":"dollar","a.b":"dot","é":"\u00e9"}"#),
        Some(r#"{"team":"a","n":1}"#),
        Some(r#"["team","a"]"#),
        Some(r#""team""#),
        Some(r#"{"team":null}"#),
        Some(r#"{"nested":{"team":"a"}}"#),
        Some(r#"{}"#),
    ];
    for (i, m) in metadata.iter().enumerate() {
        store
            .commit(enqueue(&format!("m{i}"), 0, *m, Durability::Batched))
            .await?;
    }
    let all = store.runs(&RunFilter::default()).await?;
    assert_eq!(all.len(), metadata.len());
    for (r, m) in all.iter().zip(&metadata) {
        assert_eq!(r.metadata.as_ref().map(Payload::json), *m, "stored as sent");
    }
    let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let filters = [
        pairs(&[("team", "a")]),
        pairs(&[("team", "a"), ("env", "prod")]),
        pairs(&[("env", "prod")]),
        pairs(&[("team", "c")]),
        pairs(&[("a\"b", "q\"uote")]),
        pairs(&[("$.x", "dollar"), ("a.b", "dot")]),
        pairs(&[("é", "é")]),
        pairs(&[("n", "1")]),
        pairs(&[("0", "team")]),
        pairs(&[("nested", r#"{"team":"a"}"#)]),
    ];
    for f in filters {
        let filter = RunFilter {
            metadata: f.clone(),
            ..Default::default()
        };
        let got: Vec<RunId> = store
            .runs(&filter)
            .await?
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        let expected: Vec<RunId> = all
            .iter()
            .filter(|r| filter.matches(r))
            .map(|r| r.run_id)
            .collect();
        assert_eq!(got, expected, "{f:?}");
    }
    // Paging through a filtered listing with the cursor.
    let filter = RunFilter {
        metadata: pairs(&[("team", "a")]),
        limit: 1,
        ..Default::default()
    };
    let first = store.runs(&filter).await?;
    assert_eq!(first.len(), 1);
    let rest = store
        .runs(&RunFilter {
            after: Some(first[0].run_id),
            limit: 0,
            ..filter.clone()
        })
        .await?;
    assert_eq!(rest.len(), 1);
    assert!(rest[0].run_id > first[0].run_id);

    // Damaged metadata is no label to a filter, and corrupt to a plain read.
    let damaged = all[1].run_id;
    let conn = rusqlite::Connection::open(dir.path().join("oris.db"))?;
    conn.execute(
        "UPDATE runs SET metadata = '{\"team\":' WHERE run_id = ?1",
        [damaged.as_uuid().as_bytes().to_vec()],
    )?;
    let got = store
        .runs(&RunFilter {
            metadata: pairs(&[("team", "a")]),
            ..Default::default()
        })
        .await?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].run_id != damaged);
    match store.run(damaged).await {
        Err(oris_core::store::Error::Corrupt { detail, .. }) => {
            assert!(detail.contains("`metadata`"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

/// A fenced commit refused for a lost lease in a group leaves the other commits of the
/// group alone, and writes nothing of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_lease_refuses_only_its_own_commit_in_a_group() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(open(&dir.path().join("oris.db")).await);
    let mut runs = Vec::new();
    for i in 0..8 {
        let c = enqueue(&format!("f{i}"), 0, None, Durability::Sync);
        let mut run = Run::new(&format!("f{i}"), oris_core::id::Seq::ZERO);
        run.run_id = run_id_of(&c);
        run.advance(&c);
        store.commit(c).await?;
        runs.push(run);
    }
    let claimed = store
        .claim(&claim_request("w", Timestamp::now().0, 8))
        .await?;
    assert_eq!(claimed.len(), 8);
    let tasks: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| {
            let store = store.clone();
            let mut c = run.step();
            // Odd runs present a stale epoch.
            c.fence = Some(Fence {
                run_id: run.run_id,
                epoch: if i % 2 == 0 { 1 } else { 7 },
            });
            tokio::spawn(async move { store.commit(c).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let outcome = t.await?;
        let head = store
            .thread(&runs[i].thread_id)
            .await?
            .ok_or("thread")?
            .head;
        if i % 2 == 0 {
            assert_eq!(outcome?.head, oris_core::id::Seq(2));
            assert_eq!(head, oris_core::id::Seq(2));
        } else {
            assert!(
                matches!(
                    outcome,
                    Err(oris_core::store::Error::LeaseLost { epoch: 7, .. })
                ),
                "{outcome:?}"
            );
            assert_eq!(head, oris_core::id::Seq(1), "nothing written");
        }
    }
    Ok(())
}

/// API key changes are fsynced before they return (a revoked key must stay revoked); the
/// other control-plane writes ride on unsynced groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_api_key_changes_force_an_fsync() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir.path().join("oris.db")).await;
    let synced = |s: &oris_sqlite::SqliteStore| s.stats().synced_transactions;
    store.append_audit(&audit_entry("a")).await?;
    store
        .reserve_idempotency(&reservation("k"), Timestamp::now())
        .await?;
    store.purge_idempotency(Timestamp::now()).await?;
    assert!(store.claim(&claim_request("w", 0, 5)).await?.is_empty());
    // The lease reaper and the worker registry ride on the WAL like leases.
    assert!(store.reap_leases(Timestamp::now(), 10).await?.is_empty());
    let worker = oris_core::store::WorkerRecord {
        worker_id: "w".into(),
        graphs: vec![("g".into(), "1".into())],
        capacity: 1,
        registered_at: Timestamp(1),
        last_seen: Timestamp(1),
        stopped_at: None,
    };
    store.register_worker(&worker).await?;
    assert!(store.touch_worker("w", Timestamp(2)).await?);
    assert_eq!(synced(&store), 0);
    let key = oris_core::store::ApiKeyRecord {
        key_id: "k1".into(),
        name: "ci".into(),
        role: "worker".into(),
        secret_hash: "00ff".into(),
        created_at: Timestamp(1),
        revoked_at: None,
    };
    store.create_api_key(&key).await?;
    assert_eq!(synced(&store), 1);
    assert!(matches!(
        store.create_api_key(&key).await,
        Err(oris_core::store::Error::AlreadyExists { .. })
    ));
    assert!(store.revoke_api_key("k1", Timestamp(2)).await?);
    // (The refused creation applied nothing: no transaction counted.)
    assert_eq!(synced(&store), 2);
    assert!(!store.revoke_api_key("k1", Timestamp(3)).await?);
    assert_eq!(
        store.api_key("k1").await?.and_then(|k| k.revoked_at),
        Some(Timestamp(2))
    );
    Ok(())
}
