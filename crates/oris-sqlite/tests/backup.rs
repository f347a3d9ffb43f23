//! Backup and restore: online backups taken while sixteen tasks run real graphs through the
//! engine (linear runs, interrupts and resumes, external events) restore to a consistent
//! prefix of the live store whose unfinished runs recovery completes; a backup never
//! overwrites a file; a corrupt, foreign or open database is refused with a clear error.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use oris_core::event::{Event, EventBody};
use oris_core::graph::{END, START};
use oris_core::id::{RunId, Seq, ThreadId};
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{Error, RunFilter, RunRecord, Store};
use oris_runtime::{Context, Engine, NodeError, RunOutcome, StateGraph};
use oris_sqlite::{SqliteOptions, SqliteStore};
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
struct Lin {
    counter: i64,
    #[reducer(append)]
    log: Vec<String>,
}

const NODES: usize = 10;

/// W1: `n0 → … → n9`, each adding one to `counter` (and yielding, so runs interleave).
fn linear() -> StateGraph<Lin> {
    let mut g = StateGraph::<Lin>::new("linear", "1").edge(START, "n0");
    for i in 0..NODES {
        let me = format!("n{i}");
        let entry = me.clone();
        g = g.node(me.clone(), move |s: Lin, _ctx: Context| {
            let entry = entry.clone();
            async move {
                tokio::task::yield_now().await;
                Ok::<_, NodeError>(LinUpdate::default().counter(s.counter + 1).log(vec![entry]))
            }
        });
        let next = if i + 1 < NODES {
            format!("n{}", i + 1)
        } else {
            END.to_owned()
        };
        g = g.edge(me, next);
    }
    g
}

/// `a → b → c`, `b` interrupting with "approve?" and logging `b:<answer>`.
fn approval() -> StateGraph<Lin> {
    StateGraph::<Lin>::new("approval", "1")
        .node("a", |_s: Lin, _ctx: Context| async {
            Ok::<_, NodeError>(LinUpdate::default().log(vec!["a".into()]))
        })
        .node("b", |_s: Lin, ctx: Context| async move {
            let v: String = ctx.interrupt("approve?").await?;
            Ok(LinUpdate::default().log(vec![format!("b:{v}")]))
        })
        .node("c", |_s: Lin, _ctx: Context| async {
            Ok::<_, NodeError>(LinUpdate::default().log(vec!["c".into()]))
        })
        .edge(START, "a")
        .edge("a", "b")
        .edge("b", "c")
        .edge("c", END)
}

/// `a → w`, `w` waiting for the external event "go" and logging `w:<payload>`.
fn waiter() -> StateGraph<Lin> {
    StateGraph::<Lin>::new("waiter", "1")
        .node("a", |_s: Lin, _ctx: Context| async {
            Ok::<_, NodeError>(LinUpdate::default().log(vec!["a".into()]))
        })
        .node("w", |_s: Lin, ctx: Context| async move {
            let v: Option<String> = ctx.wait_for_event("go", Duration::from_secs(600)).await?;
            Ok(LinUpdate::default().log(vec![format!("w:{}", v.unwrap_or_default())]))
        })
        .edge(START, "a")
        .edge("a", "w")
        .edge("w", END)
}

fn thread_id(s: &str) -> ThreadId {
    ThreadId::new(s).expect("valid thread id")
}

/// One workload task: runs graphs on fresh threads until `stop`; every fourth cycle is an
/// interrupt answered (one in eight left paused), every fourth an external-event wait.
async fn work(engine: Engine, task: usize, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let lin = engine.register(linear().compile().expect("linear compiles"));
    let appr = engine.register(approval().compile().expect("approval compiles"));
    let wait = engine.register(waiter().compile().expect("waiter compiles"));
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("t{task}-{k}");
        match k % 4 {
            0 | 1 => match lin.start(&id, Lin::default()).await.expect("linear run") {
                RunOutcome::Completed { state, .. } => assert_eq!(state.counter, NODES as i64),
                other => panic!("linear run {id} ended {:?}", other.run_id()),
            },
            2 => {
                let out = appr.start(&id, Lin::default()).await.expect("approval run");
                let RunOutcome::Interrupted { interrupts, .. } = out else {
                    panic!("approval run {id} did not pause");
                };
                if k % 8 != 6 {
                    let out = appr
                        .resume(interrupts[0].interrupt_id, "yes")
                        .await
                        .expect("resume");
                    assert!(matches!(out, RunOutcome::Completed { .. }), "{id}");
                }
            }
            _ => {
                let out = wait.start(&id, Lin::default()).await.expect("waiter run");
                assert!(matches!(out, RunOutcome::Waiting { .. }), "{id}");
                engine
                    .send_event(&thread_id(&id), "go", "now", None)
                    .await
                    .expect("send event");
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
        k += 1;
    }
}

async fn all_runs(store: &dyn Store) -> Vec<RunRecord> {
    let mut out = Vec::new();
    let mut filter = RunFilter {
        limit: 500,
        ..RunFilter::default()
    };
    loop {
        let page = store.runs(&filter).await.expect("list runs");
        let Some(last) = page.last() else { break };
        filter.after = Some(last.run_id);
        out.extend(page);
    }
    out
}

fn terminal_matches(status: &RunStatus, body: &EventBody) -> bool {
    matches!(
        (status, body),
        (RunStatus::Completed { .. }, EventBody::RunCompleted)
            | (RunStatus::Failed { .. }, EventBody::RunFailed { .. })
            | (RunStatus::Cancelled { .. }, EventBody::RunCancelled { .. })
    )
}

/// Checks that `store` is internally consistent and, with `live`, that every thread's log
/// is a prefix of the live one. Returns the number of runs per status kind.
async fn check_consistent(
    store: &SqliteStore,
    live: Option<&SqliteStore>,
) -> HashMap<StatusKind, usize> {
    let runs = all_runs(store).await;
    let mut by_thread: HashMap<ThreadId, Vec<RunRecord>> = HashMap::new();
    let mut kinds: HashMap<StatusKind, usize> = HashMap::new();
    for run in runs {
        *kinds.entry(run.status.kind()).or_default() += 1;
        by_thread
            .entry(run.thread_id.clone())
            .or_default()
            .push(run);
    }
    for (tid, mut runs) in by_thread {
        runs.sort_by_key(|r| r.first_seq);
        let thread = store.thread(&tid).await.unwrap().expect("thread of a run");
        let events: Vec<Event> = store.events(&tid, Seq::ZERO, 1_000_000).await.unwrap();
        // The log is contiguous from 1 to the head.
        assert_eq!(events.len() as u64, thread.head.0, "{tid}: head vs log");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq.0, i as u64 + 1, "{tid}: gap in the log");
        }
        // … and a prefix of the live log (events are immutable once committed).
        if let Some(live) = live {
            let live_events = live.events(&tid, Seq::ZERO, events.len()).await.unwrap();
            assert_eq!(live_events, events, "{tid}: not a prefix of the live log");
        }
        assert_eq!(
            thread.last_run,
            runs.last().map(|r| r.run_id),
            "{tid}: last run"
        );
        let active: Vec<RunId> = runs
            .iter()
            .filter(|r| !r.status.is_terminal())
            .map(|r| r.run_id)
            .collect();
        assert!(active.len() <= 1, "{tid}: several unfinished runs");
        assert_eq!(
            thread.active_run,
            active.first().copied(),
            "{tid}: active run"
        );
        for run in &runs {
            let own: Vec<&Event> = events.iter().filter(|e| e.run_id == run.run_id).collect();
            let first = own.first().expect("a run has events");
            assert_eq!(first.seq, run.first_seq, "{tid}: first seq");
            assert!(matches!(first.body, EventBody::RunStarted { .. }), "{tid}");
            let terminal: Vec<&&Event> = own.iter().filter(|e| e.body.is_terminal()).collect();
            if run.status.is_terminal() {
                assert_eq!(
                    terminal.len(),
                    1,
                    "{tid}: terminal run without its end event"
                );
                assert!(terminal_matches(&run.status, &terminal[0].body), "{tid}");
                assert_eq!(
                    own.last().unwrap().seq,
                    terminal[0].seq,
                    "{tid}: events after the end"
                );
            } else {
                assert!(
                    terminal.is_empty(),
                    "{tid}: unfinished run with an end event"
                );
            }
        }
        // The snapshot lies within the log and belongs to one of the thread's runs.
        if let Some(snap) = store.snapshot(&tid, thread.head).await.unwrap() {
            assert!(
                snap.at_seq.0 >= 1 && snap.at_seq <= thread.head,
                "{tid}: snapshot"
            );
            assert!(
                runs.iter().any(|r| r.run_id == snap.run_id),
                "{tid}: snapshot run"
            );
        }
        let at = |seq: Seq| &events[(seq.0 - 1) as usize].body;
        // Interrupt rows point at their events; a paused run has one unanswered.
        let interrupts = store.interrupts(&tid).await.unwrap();
        for i in &interrupts {
            assert!(
                i.raised_seq <= thread.head,
                "{tid}: interrupt beyond the head"
            );
            assert!(
                matches!(at(i.raised_seq), EventBody::InterruptRaised { interrupt_id, .. } if *interrupt_id == i.interrupt_id),
                "{tid}: interrupt row without its event"
            );
            if let Some(applied) = i.applied_seq {
                assert!(applied <= thread.head, "{tid}: applied beyond the head");
                assert!(
                    matches!(at(applied), EventBody::InterruptResumed { interrupt_id, .. } if *interrupt_id == i.interrupt_id),
                    "{tid}: applied seq without its event"
                );
            }
        }
        for run in runs
            .iter()
            .filter(|r| r.status.kind() == StatusKind::Interrupted)
        {
            assert!(
                interrupts
                    .iter()
                    .any(|i| i.run_id == run.run_id && i.applied_seq.is_none()),
                "{tid}: interrupted run without a pending interrupt"
            );
        }
        // Consumed deliveries point at the event that received them.
        for d in store.deliveries(&tid, false).await.unwrap() {
            if let Some(seq) = d.consumed_seq {
                assert!(
                    seq <= thread.head,
                    "{tid}: delivery consumed beyond the head"
                );
                assert!(
                    matches!(at(seq), EventBody::EventReceived { delivery, .. } if *delivery == Some(d.delivery_id)),
                    "{tid}: consumed delivery without its event"
                );
            }
        }
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_mid_workload_restores_a_consistent_recoverable_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let live = Arc::new(
        SqliteStore::open(dir.path().join("live.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let engine = Engine::new(live.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|t| tokio::spawn(work(engine.clone(), t, stop.clone(), done.clone())))
        .collect();

    // Three backups at different points of the workload, each while it runs.
    let mut backups = Vec::new();
    for b in 0..3 {
        let target = (b + 1) * 60;
        while done.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = live.stats().commits;
        let path = dir.path().join(format!("backup-{b}.db"));
        live.backup_to(&path).await.unwrap();
        let after = live.stats().commits;
        eprintln!(
            "backup {b}: {} cycles done, commits {before} → {after} during the copy",
            done.load(Ordering::Relaxed)
        );
        backups.push(path);
    }
    // The store kept serving: the workload goes on after the backups.
    let at_last_backup = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < at_last_backup + 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let mut unfinished_running = 0;
    for (b, backup) in backups.iter().enumerate() {
        let restored = dir.path().join(format!("restored-{b}.db"));
        SqliteStore::restore_from(backup, &restored).await.unwrap();
        let store = Arc::new(
            SqliteStore::open(&restored, SqliteOptions::default())
                .await
                .unwrap(),
        );
        let kinds = check_consistent(&store, Some(&live)).await;
        eprintln!("restored backup {b}: runs by status {kinds:?}");
        assert!(kinds.get(&StatusKind::Completed).copied().unwrap_or(0) > 0);
        unfinished_running += kinds.get(&StatusKind::Running).copied().unwrap_or(0);

        // Recovery completes what was running at the backup's instant.
        let engine = Engine::new(store.clone());
        let _ = engine.register(linear().compile().unwrap());
        let _ = engine.register(approval().compile().unwrap());
        let _ = engine.register(waiter().compile().unwrap());
        let report = engine.recover().await.unwrap();
        assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);
        for (tid, _run, status) in &report.resumed {
            let graph = store.thread(tid).await.unwrap().unwrap().graph;
            match graph.as_str() {
                "linear" => assert_eq!(*status, StatusKind::Completed, "{tid}"),
                // Paused for an answer nobody gave, or done if the answer was in the backup.
                "approval" => assert!(
                    matches!(status, StatusKind::Interrupted | StatusKind::Completed),
                    "{tid}: {status:?}"
                ),
                // Done if the event was delivered before the backup, else still waiting.
                "waiter" => assert!(
                    matches!(status, StatusKind::Waiting | StatusKind::Completed),
                    "{tid}: {status:?}"
                ),
                other => panic!("unknown graph {other}"),
            }
        }
        let kinds = check_consistent(&store, None).await;
        assert_eq!(
            kinds.get(&StatusKind::Running),
            None,
            "after recovery: {kinds:?}"
        );
        assert_eq!(
            kinds.get(&StatusKind::Queued),
            None,
            "after recovery: {kinds:?}"
        );
    }
    // The backups caught runs in flight (16 tasks commit continuously), so recovery had work.
    assert!(unfinished_running > 0, "no backup caught a running run");
    check_consistent(&live, None).await;
}

#[tokio::test]
async fn backup_never_overwrites_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("a.db"), SqliteOptions::default())
        .await
        .unwrap();
    let existing = dir.path().join("existing.db");
    std::fs::write(&existing, b"precious").unwrap();
    let err = store.backup_to(&existing).await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
    // An empty file too (which VACUUM INTO itself would accept).
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    assert!(store.backup_to(&empty).await.is_err());
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    // A fresh path works, also in a directory still to be created.
    store.backup_to(dir.path().join("sub/b.db")).await.unwrap();
    assert!(store.backup_to(dir.path().join("sub/b.db")).await.is_err());
}

fn assert_incompatible(err: &Error, backup: &Path, needle: &str) {
    let text = err.to_string();
    assert!(matches!(err, Error::Incompatible(_)), "{err:?}");
    assert!(
        text.contains(&backup.display().to_string()),
        "names the backup: {text}"
    );
    assert!(text.contains(needle), "{text}");
}

#[tokio::test]
async fn restore_refuses_corrupt_foreign_and_open_databases() {
    let dir = tempfile::tempdir().unwrap();
    let live_path = dir.path().join("live.db");
    let store = SqliteStore::open(&live_path, SqliteOptions::default())
        .await
        .unwrap();
    let good = dir.path().join("good.db");
    store.backup_to(&good).await.unwrap();
    let target = dir.path().join("target.db");

    // Not a database at all.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a_u8; 64 * 1024]).unwrap();
    let err = SqliteStore::restore_from(&garbage, &target)
        .await
        .unwrap_err();
    assert_incompatible(&err, &garbage, "not a usable SQLite database");
    assert!(!target.exists(), "nothing restored");

    // A real backup with a damaged page (page 2, a b-tree page: VACUUM leaves no free pages).
    let mut bytes = std::fs::read(&good).unwrap();
    let page = 4096;
    assert!(bytes.len() >= 3 * page, "backup has several pages");
    for b in &mut bytes[page..2 * page] {
        *b = 0xff;
    }
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, &bytes).unwrap();
    let err = SqliteStore::restore_from(&damaged, &target)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Incompatible(_)), "{err:?}");
    assert!(
        err.to_string().contains(&damaged.display().to_string()),
        "{err}"
    );
    assert!(!target.exists(), "nothing restored");

    // A sound SQLite database that is not an Oris one.
    let foreign = dir.path().join("foreign.db");
    std::fs::write(&foreign, b"").unwrap();
    let err = SqliteStore::restore_from(&foreign, &target)
        .await
        .unwrap_err();
    assert_incompatible(&err, &foreign, "not an Oris backup");

    // A missing backup.
    let err = SqliteStore::restore_from(dir.path().join("missing.db"), &target)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.db"), "{err}");

    // Over a database that is open: refused, the open database untouched.
    let err = SqliteStore::restore_from(&good, &live_path)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is open"), "{err}");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    store
        .backup_to(dir.path().join("still-fine.db"))
        .await
        .unwrap();
    drop(store);

    // Closed: the restore replaces it, and a damaged target is replaced too.
    SqliteStore::restore_from(&good, &live_path).await.unwrap();
    std::fs::write(&target, b"junk that is not a database").unwrap();
    SqliteStore::restore_from(&good, &target).await.unwrap();
    let reopened = SqliteStore::open(&target, SqliteOptions::default())
        .await
        .unwrap();
    assert!(all_runs(&reopened).await.is_empty());
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
