//! The schema, as ordered migrations, and the code that applies them on open.
//!
//! The schema version lives in `PRAGMA user_version`. Migration `i` (0-based) takes the
//! database from version `i` to `i + 1`; all pending ones run in one `BEGIN IMMEDIATE`
//! transaction, so concurrent openers serialize and a failed migration leaves the file as it
//! was. A database written by a newer Oris (version above [`LATEST`]) is refused rather than
//! guessed at.
//!
//! Compactness is a requirement, not a nicety (a 100-superstep run must fit in ~15 KB), so:
//! integer surrogate keys everywhere, run ids as 16-byte blobs, event kinds as small
//! integers (0 for the most frequent kind, which SQLite stores in zero bytes), event times
//! as milliseconds after their run's creation, and the event key packed into the rowid (see
//! [`event_id`](crate::codec::event_id)) so that appends fill leaf pages completely — a
//! `WITHOUT ROWID` table keyed `(thread_key, seq)` measured 8% larger for the same 100-event
//! threads, because SQLite only packs pages fully on append for rowid tables.

use std::path::Path;

use oris_core::store::Error;
use rusqlite::{Connection, TransactionBehavior};

/// Version 1: threads, runs, the event log, one snapshot per thread, interrupts and
/// deliveries.
///
/// Keep the `CHECK` lists in sync with `StatusKind::ALL` and the event kind codes in
/// `codec.rs`; unit tests compare them.
const V1: &str = r#"
CREATE TABLE threads (
    key            INTEGER PRIMARY KEY,
    thread_id      TEXT    NOT NULL UNIQUE,
    graph          TEXT    NOT NULL,
    head           INTEGER NOT NULL CHECK (head >= 0),
    active_run_key INTEGER REFERENCES runs (key),
    last_run_key   INTEGER REFERENCES runs (key),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE runs (
    key           INTEGER PRIMARY KEY,
    run_id        BLOB    NOT NULL UNIQUE CHECK (length(run_id) = 16),
    thread_key    INTEGER NOT NULL REFERENCES threads (key),
    graph         TEXT    NOT NULL,
    graph_version TEXT    NOT NULL,
    status        TEXT    NOT NULL
                  CHECK (status IN ('queued', 'running', 'interrupted', 'waiting', 'completed', 'failed', 'cancelled')),
    status_data   TEXT    NOT NULL,
    first_seq     INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    -- When a waiting run must be woken up (ms since the epoch); NULL otherwise.
    wake_at       INTEGER
);

CREATE INDEX runs_by_thread ON runs (thread_key, run_id);

-- Waiting runs by wake-up time: what a timer sweep reads.
CREATE INDEX runs_due ON runs (wake_at) WHERE wake_at IS NOT NULL;

-- Only unfinished runs are in it, so finished runs cost nothing here; recovery lists it.
CREATE INDEX runs_unfinished ON runs (run_id) WHERE status IN ('queued', 'running', 'interrupted', 'waiting');

-- id = (thread_key << 32) | seq. `at` is milliseconds after the run's created_at.
-- kind codes: 0 node_completed, 1 run_started, 2 node_failed, 3 run_completed,
-- 4 run_failed, 5 run_cancelled, 6 step_recorded, 7 interrupt_raised, 8 interrupt_resumed,
-- 9 run_suspended, 10 run_resumed, 11 event_received, 12 run_rebased, 13 state_updated.
CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    run_key   INTEGER NOT NULL REFERENCES runs (key),
    at        INTEGER NOT NULL,
    kind      INTEGER NOT NULL CHECK (kind IN (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)),
    superstep INTEGER,
    task      INTEGER,
    node      TEXT,
    attempt   INTEGER,
    data      TEXT,
    extra     TEXT
);

-- The event log with its key unpacked and absolute times, for people reading the file.
CREATE VIEW events_view AS
SELECT t.thread_id, e.id & 4294967295 AS seq, r.run_id, r.created_at + e.at AS at, e.kind,
       e.superstep, e.task, e.node, e.attempt, e.data, e.extra
FROM events e
JOIN threads t ON t.key = e.id >> 32
JOIN runs r ON r.key = e.run_key;

-- One row per thread: a new snapshot replaces the previous one. The log is the source of
-- truth; the snapshot only saves replaying it. `state` starts with a format byte
-- (0 = JSON, 1 = LZ4 block with prepended size).
CREATE TABLE snapshots (
    thread_key     INTEGER PRIMARY KEY REFERENCES threads (key),
    at_seq         INTEGER NOT NULL,
    run_key        INTEGER NOT NULL REFERENCES runs (key),
    next_superstep INTEGER NOT NULL,
    state          BLOB    NOT NULL,
    boundary       TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
);

-- Interrupts raised by runs (`InterruptRaised` events), with the resume value once one is
-- recorded (`answer_interrupt`, or the value of the `InterruptResumed` event that applied
-- it) and the seq of that `InterruptResumed` event. Times are absolute milliseconds.
CREATE TABLE interrupts (
    key          INTEGER PRIMARY KEY,
    interrupt_id BLOB    NOT NULL UNIQUE CHECK (length(interrupt_id) = 16),
    thread_key   INTEGER NOT NULL REFERENCES threads (key),
    run_key      INTEGER NOT NULL REFERENCES runs (key),
    node         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    raised_seq   INTEGER NOT NULL,
    raised_at    INTEGER NOT NULL,
    answer       TEXT,
    answered_at  INTEGER,
    applied_seq  INTEGER,
    CHECK ((answer IS NULL) = (answered_at IS NULL))
);

CREATE INDEX interrupts_by_thread ON interrupts (thread_key, raised_seq);

-- External events sent to threads, in arrival order (`key`), until an `EventReceived`
-- event consumes them (`consumed_seq`). `idem_key` is the sender's idempotency key.
CREATE TABLE deliveries (
    key          INTEGER PRIMARY KEY,
    delivery_id  BLOB    NOT NULL UNIQUE CHECK (length(delivery_id) = 16),
    thread_key   INTEGER NOT NULL REFERENCES threads (key),
    name         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    idem_key     TEXT,
    sent_at      INTEGER NOT NULL,
    consumed_seq INTEGER
);

-- Every delivery of a thread, in arrival order (the rowid is the last column of an index).
CREATE INDEX deliveries_by_thread ON deliveries (thread_key);

-- The pending ones only: consumed deliveries cost nothing here.
CREATE INDEX deliveries_pending ON deliveries (thread_key) WHERE consumed_seq IS NULL;

-- One delivery per idempotency key and thread.
CREATE UNIQUE INDEX deliveries_by_idem_key ON deliveries (thread_key, idem_key)
    WHERE idem_key IS NOT NULL;
"#;

/// Version 2: what a server keeps beside the threads — run priority, metadata, readiness
/// and leases (with fencing epochs), idempotency records, API keys and the audit log.
///
/// `ready_at` is when a worker may claim the run (`oris_core::store::plan_claim`); `wake_at`
/// stays what it was (the `until` of a waiting run, for `due_runs`). Existing runs get the
/// `ready_at` the rules give them: a queued run at its creation, a waiting run at its
/// wake-up time or at the earliest pending delivery it waits for, an interrupted run whose
/// open interrupts are all answered at the last answer.
const V2: &str = r#"
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- A JSON object of strings (caller-supplied labels), as sent.
ALTER TABLE runs ADD COLUMN metadata TEXT;
-- When a worker may claim the run (ms since the epoch); NULL: not claimable.
ALTER TABLE runs ADD COLUMN ready_at INTEGER;
-- The fencing epoch of the latest claim (0: never claimed); only ever increases.
ALTER TABLE runs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0 CHECK (lease_epoch >= 0);
ALTER TABLE runs ADD COLUMN lease_worker TEXT;
ALTER TABLE runs ADD COLUMN lease_expires INTEGER
    CHECK ((lease_worker IS NULL) = (lease_expires IS NULL));

UPDATE runs SET ready_at = created_at WHERE status = 'queued';
UPDATE runs SET ready_at = coalesce(
    min(wake_at, (SELECT min(d.sent_at) FROM deliveries d
                  WHERE d.thread_key = runs.thread_key AND d.consumed_seq IS NULL
                    AND d.name IN (SELECT value FROM json_each(runs.status_data, '$.events')))),
    wake_at,
    (SELECT min(d.sent_at) FROM deliveries d
     WHERE d.thread_key = runs.thread_key AND d.consumed_seq IS NULL
       AND d.name IN (SELECT value FROM json_each(runs.status_data, '$.events'))))
WHERE status = 'waiting';
UPDATE runs SET ready_at = (SELECT max(i.answered_at) FROM interrupts i
                            WHERE i.run_key = runs.key AND i.applied_seq IS NULL)
WHERE status = 'interrupted'
  AND EXISTS (SELECT 1 FROM interrupts i WHERE i.run_key = runs.key AND i.applied_seq IS NULL)
  AND NOT EXISTS (SELECT 1 FROM interrupts i
                  WHERE i.run_key = runs.key AND i.applied_seq IS NULL AND i.answer IS NULL);

-- Claimable runs, by priority then readiness: a claim seeks the highest priority present,
-- then reads that priority's runs ready by now in order, and stops at its limit. Only
-- runs with a `ready_at` are in it (not finished ones, nor interrupted ones awaiting
-- answers), so the index stays as small as the backlog.
CREATE INDEX runs_ready ON runs (priority, ready_at, run_id) WHERE ready_at IS NOT NULL;

-- Open interrupts only (applied ones cost nothing here): the listing of open interrupts
-- in id order, and a run's open interrupts when an answer may make it ready.
CREATE INDEX interrupts_open ON interrupts (interrupt_id) WHERE applied_seq IS NULL;
CREATE INDEX interrupts_open_by_run ON interrupts (run_key) WHERE applied_seq IS NULL;

-- A stored response per (caller, idempotency key). `status`/`body` are the response, NULL
-- while the first request is in flight (until `locked_until`). Purged after `expires_at`.
CREATE TABLE idempotency (
    scope        TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    status       INTEGER CHECK (status BETWEEN 0 AND 65535),
    body         TEXT,
    PRIMARY KEY (scope, key),
    CHECK ((status IS NULL) = (body IS NULL))
) WITHOUT ROWID;

CREATE INDEX idempotency_expiry ON idempotency (expires_at);

-- API keys: the secret is never stored, only its keyed hash. `key` is creation order.
CREATE TABLE api_keys (
    key         INTEGER PRIMARY KEY,
    key_id      TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    secret_hash TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- The audit log. AUTOINCREMENT: an id is never handed out twice, even after deletions.
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    target     TEXT,
    request_id TEXT    NOT NULL,
    status     INTEGER NOT NULL CHECK (status BETWEEN 0 AND 65535),
    outcome    TEXT    NOT NULL,
    details    TEXT
);
"#;

/// Version 3: remote workers and the lease reaper — the worker registry, and an index of
/// leased runs by lease expiry — and the pending runs of the multitask strategy `enqueue`;
/// runs driven by the library are never claimable; one index of open interrupts fewer, and
/// `runs_unfinished` keyed on a column that only a run's end sets.
///
/// `runs_leased` holds only runs with a lease (at most the workers' total capacity, however
/// large the backlog), so the reaper reads the expired leases as its head and lease counts
/// read the live ones as its tail, neither touching other runs. (The claim index
/// `runs_ready` cannot serve them: it is ordered by priority first, and every queued run
/// ready by now sits among the expired leases in it.) Existing runs need no backfill: the
/// index is built from their lease columns.
///
/// Runs driven in-process by the library (never queued, never claimed: `lease_epoch = 0`
/// and not `queued`) lose the `ready_at` that version 2's rules gave their timers, answers
/// and deliveries (`oris_core::store::driven_by_workers`), so that no server claims them.
/// `interrupts_open_by_run` goes: a run's open interrupts are read as the range of
/// `interrupts_by_thread` from the run's first seq (only the thread's latest run is asked
/// about), so raising and applying an interrupt write one index page fewer each.
///
/// `runs_unfinished` is rebuilt on `ended` (1 once the run ended, NULL before): its old
/// predicate named `status`, so SQLite rewrote its entry at every status change — a
/// suspension, a resume, a claim — although the run stayed in it; now only a run's creation
/// and end write it.
const V3: &str = r#"
-- Runs driven by the library are never claimable.
UPDATE runs SET ready_at = NULL
WHERE ready_at IS NOT NULL AND lease_epoch = 0 AND status <> 'queued';

-- A run's open interrupts are a range of interrupts_by_thread.
DROP INDEX interrupts_open_by_run;

-- 1 once the run ended (completed, failed or cancelled), NULL while it is unfinished; set
-- with the final status, never cleared.
ALTER TABLE runs ADD COLUMN ended INTEGER CHECK (ended = 1);
UPDATE runs SET ended = 1 WHERE status IN ('completed', 'failed', 'cancelled');

-- Unfinished runs only, as before; status changes between unfinished statuses leave it be.
DROP INDEX runs_unfinished;
CREATE INDEX runs_unfinished ON runs (run_id) WHERE ended IS NULL;

-- Leased runs by lease expiry: the reaper's expired leases, earliest first, and the live
-- leases lease counts group by graph.
CREATE INDEX runs_leased ON runs (lease_expires, run_id) WHERE lease_worker IS NOT NULL;

-- Remote workers, registered by their polls. `graphs` is the JSON array of the
-- [name, version] pairs a worker executes; `registered_at` is kept across
-- re-registrations; `stopped_at` is set by a graceful stop and cleared by the next
-- registration.
CREATE TABLE workers (
    worker_id     TEXT    PRIMARY KEY,
    graphs        TEXT    NOT NULL,
    capacity      INTEGER NOT NULL CHECK (capacity BETWEEN 0 AND 4294967295),
    registered_at INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    stopped_at    INTEGER
) WITHOUT ROWID;

-- Runs waiting for their thread (multitask strategy `enqueue`): started, oldest position
-- first, when the thread's unfinished run ends. `request` is the create request as JSON
-- text (input and run options); `position` is per thread, one more than the highest
-- pending one. The unique index serves a thread's queue in order and its highest position.
CREATE TABLE pending_runs (
    run_id        BLOB    PRIMARY KEY CHECK (length(run_id) = 16),
    thread_id     TEXT    NOT NULL,
    position      INTEGER NOT NULL CHECK (position > 0),
    graph         TEXT    NOT NULL,
    graph_version TEXT    NOT NULL,
    request       TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE UNIQUE INDEX pending_runs_by_thread ON pending_runs (thread_id, position);
"#;

/// The migrations, in order; `MIGRATIONS[i]` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this code writes and understands.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings the database at `path` (open on `conn`) to [`LATEST`].
///
/// # Errors
/// [`Error::Incompatible`] when the database is newer than this code, [`Error::Unavailable`]
/// on an SQLite error.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    migrate_to(conn, path, LATEST)
}

/// Brings the database to version `target` (at most [`LATEST`]; tests build databases of
/// older versions with it).
fn migrate_to(conn: &mut Connection, path: &Path, target: i64) -> Result<(), Error> {
    let sql = |e: rusqlite::Error| Error::Unavailable(format!("migrating {}: {e}", path.display()));
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    if version > LATEST {
        return Err(Error::Incompatible(format!(
            "database {} has schema version {version}, newer than version {LATEST}, the newest \
             this build of oris-sqlite knows; open it with a newer Oris",
            path.display()
        )));
    }
    if version < 0 {
        return Err(Error::Incompatible(format!(
            "database {} has an invalid schema version {version}",
            path.display()
        )));
    }
    let target = target.clamp(version, LATEST);
    for (i, step) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target as usize)
        .skip(version as usize)
    {
        tx.execute_batch(step).map_err(sql)?;
        tracing::info!(path = %path.display(), version = i + 1, "sqlite schema migrated");
    }
    tx.pragma_update(None, "user_version", target)
        .map_err(sql)?;
    tx.commit().map_err(sql)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{kind_code, kind_from_code};
    use oris_core::event::EventKind;
    use oris_core::status::StatusKind;

    /// The text between `marker` and the next `)` in the schema.
    fn check_list(marker: &str) -> Vec<String> {
        let start = V1.find(marker).expect("marker in schema") + marker.len();
        let end = start + V1[start..].find(')').expect("closing parenthesis");
        V1[start..end]
            .split(',')
            .map(|s| s.trim().trim_matches('\'').to_owned())
            .collect()
    }

    #[test]
    fn status_check_lists_every_status_kind() {
        let listed = check_list("CHECK (status IN (");
        let expected: Vec<String> = StatusKind::ALL
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect();
        assert_eq!(listed, expected);
    }

    #[test]
    fn kind_check_lists_every_event_kind_code() {
        let mut listed: Vec<i64> = check_list("CHECK (kind IN (")
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        listed.sort_unstable();
        let mut expected: Vec<i64> = EventKind::ALL
            .iter()
            .map(|k| kind_code(*k).expect("every kind has a code"))
            .collect();
        expected.sort_unstable();
        assert_eq!(listed, expected);
        for code in listed {
            assert!(kind_from_code(code).is_some(), "code {code}");
        }
    }

    /// A run row of schema version 1: key, status, created_at, wake_at.
    fn v1_run(conn: &Connection, key: i64, status: &oris_core::status::RunStatus, created: i64) {
        let (kind, data) = status.to_columns().unwrap();
        let mut id = [0u8; 16];
        id[15] = key as u8;
        id[6] = 0x70; // a version-7 UUID
        id[8] = 0x80;
        conn.execute(
            "INSERT INTO threads (key, thread_id, graph, head, created_at, updated_at)
             VALUES (?1, 't' || ?1, 'g', 1, ?2, ?2)",
            rusqlite::params![key, created],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO runs (key, run_id, thread_key, graph, graph_version, status, status_data,
                               first_seq, created_at, updated_at, wake_at)
             VALUES (?1, ?2, ?1, 'g', '1', ?3, ?4, 1, ?5, ?5, ?6)",
            rusqlite::params![
                key,
                id,
                kind,
                data,
                created,
                oris_core::store::wake_at(status).map(|t| t.0)
            ],
        )
        .unwrap();
        conn.execute(
            "UPDATE threads SET active_run_key = ?1, last_run_key = ?1 WHERE key = ?1",
            [key],
        )
        .unwrap();
    }

    fn v1_interrupt(conn: &Connection, run: i64, n: u8, answered: Option<i64>, applied: bool) {
        let mut id = [0u8; 16];
        id[0] = run as u8;
        id[15] = n;
        conn.execute(
            "INSERT INTO interrupts (interrupt_id, thread_key, run_key, node, payload, raised_seq,
                                     raised_at, answer, answered_at, applied_seq)
             VALUES (?1, ?2, ?2, 'n', '1', 1, 10, ?3, ?4, ?5)",
            rusqlite::params![
                id,
                run,
                answered.map(|_| "true"),
                answered,
                applied.then_some(2)
            ],
        )
        .unwrap();
    }

    fn v1_delivery(conn: &Connection, thread: i64, n: u8, name: &str, sent: i64, consumed: bool) {
        let mut id = [0u8; 16];
        id[0] = thread as u8;
        id[15] = n;
        conn.execute(
            "INSERT INTO deliveries (delivery_id, thread_key, name, payload, sent_at, consumed_seq)
             VALUES (?1, ?2, ?3, '{}', ?4, ?5)",
            rusqlite::params![id, thread, name, sent, consumed.then_some(2)],
        )
        .unwrap();
    }

    /// A database written by the previous version (1) is upgraded in place on open: its
    /// rows stay, runs get the readiness the rules give them, and the store works on them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_1_database_migrates_in_place_on_open() {
        use oris_core::id::{InterruptId, Timestamp};
        use oris_core::status::{PendingInterrupt, RunStatus};
        use oris_core::store::{ClaimRequest, RunFilter, Store};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "wal").unwrap();
            migrate_to(&mut conn, &path, 1).unwrap();
            let v: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, 1);
            let waiting = |until: Option<i64>, events: &[&str]| RunStatus::Waiting {
                until: until.map(Timestamp),
                events: events.iter().map(|e| (*e).to_owned()).collect(),
            };
            let interrupted = RunStatus::Interrupted {
                interrupts: vec![PendingInterrupt {
                    interrupt_id: InterruptId::generate(),
                    node: "n".into(),
                    payload: serde_json::json!(1),
                }],
            };
            v1_run(&conn, 1, &RunStatus::Queued, 1_000);
            v1_run(&conn, 2, &RunStatus::Running, 1_100);
            // Waits until 5,000 or for `go`, which arrived at 3,000 (the `go` of 2,000 was
            // consumed, `other` is not waited for).
            v1_run(&conn, 3, &waiting(Some(5_000), &["go"]), 1_200);
            v1_delivery(&conn, 3, 1, "other", 1_500, false);
            v1_delivery(&conn, 3, 2, "go", 2_000, true);
            v1_delivery(&conn, 3, 3, "go", 3_000, false);
            v1_run(&conn, 4, &waiting(Some(7_000), &[]), 1_300);
            // Both open interrupts answered (the last at 4,500); a third was applied.
            v1_run(&conn, 5, &interrupted, 1_400);
            v1_interrupt(&conn, 5, 1, Some(4_000), false);
            v1_interrupt(&conn, 5, 2, Some(4_500), false);
            v1_interrupt(&conn, 5, 3, Some(100), true);
            // One open interrupt still unanswered: not ready.
            v1_run(&conn, 6, &interrupted, 1_500);
            v1_interrupt(&conn, 6, 1, Some(4_000), false);
            v1_interrupt(&conn, 6, 2, None, false);
            v1_run(
                &conn,
                7,
                &RunStatus::Cancelled { reason: "x".into() },
                1_600,
            );
            // Waits for `x` only, which arrived at 2,500.
            v1_run(&conn, 8, &waiting(None, &["x"]), 1_700);
            v1_delivery(&conn, 8, 1, "x", 2_500, false);
            v1_run(&conn, 9, &waiting(None, &["y"]), 1_800);

            // Version 2 gave every run the readiness of its status, answers and deliveries.
            migrate_to(&mut conn, &path, 2).unwrap();
            let ready: Vec<(i64, Option<i64>)> = conn
                .prepare("SELECT created_at, ready_at FROM runs ORDER BY key")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(
                ready,
                vec![
                    (1_000, Some(1_000)),
                    (1_100, None),
                    (1_200, Some(3_000)),
                    (1_300, Some(7_000)),
                    (1_400, Some(4_500)),
                    (1_500, None),
                    (1_600, None),
                    (1_700, Some(2_500)),
                    (1_800, None),
                ]
            );
        }

        // Version 3: of those, only the queued run is driven by workers (the others were
        // never claimed: the library drives them), so it alone stays claimable.
        let store = crate::SqliteStore::open(&path, crate::SqliteOptions::default())
            .await
            .unwrap();
        let runs = store.runs(&RunFilter::default()).await.unwrap();
        let ready: Vec<(i64, Option<i64>)> = runs
            .iter()
            .map(|r| (r.created_at.0, r.ready_at.map(|t| t.0)))
            .collect();
        assert_eq!(
            ready,
            vec![
                (1_000, Some(1_000)),
                (1_100, None),
                (1_200, None),
                (1_300, None),
                (1_400, None),
                (1_500, None),
                (1_600, None),
                (1_700, None),
                (1_800, None),
            ]
        );
        for r in &runs {
            assert_eq!(
                (r.priority, &r.metadata, r.lease_epoch, &r.lease),
                (0, &None, 0, &None)
            );
        }

        // Only the queued run is claimable; it starts running.
        let claimed = store
            .claim(&ClaimRequest {
                worker_id: "w".into(),
                now: Timestamp(10_000),
                ttl: std::time::Duration::from_secs(30),
                limit: 10,
                graphs: vec![],
            })
            .await
            .unwrap();
        let order: Vec<i64> = claimed.iter().map(|r| r.created_at.0).collect();
        assert_eq!(order, vec![1_000]);
        assert_eq!(claimed[0].status, RunStatus::Running);
        assert!(claimed.iter().all(|r| r.lease_epoch == 1));
        // Version 3 marks the cancelled run ended: the unfinished listing (by the partial
        // index on `ended`) has every other run.
        let unfinished: Vec<i64> = store
            .runs(&RunFilter::unfinished())
            .await
            .unwrap()
            .iter()
            .map(|r| r.created_at.0)
            .collect();
        assert_eq!(
            unfinished,
            vec![1_000, 1_100, 1_200, 1_300, 1_400, 1_500, 1_700, 1_800]
        );
        drop(store);

        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, LATEST);
        let (threads, deliveries, interrupts): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM threads), (SELECT count(*) FROM deliveries),
                        (SELECT count(*) FROM interrupts)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((threads, deliveries, interrupts), (9, 4, 5));
        let ended: Vec<i64> = conn
            .prepare("SELECT created_at FROM runs WHERE ended = 1")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ended, vec![1_600], "only the cancelled run is ended");
    }

    /// A database written by version 2 is upgraded in place on open: its leased runs are in
    /// the new lease index (lease counts and the reaper find them, by their lease columns
    /// alone), and the worker registry works. Runs driven by the library lose the readiness
    /// version 2 gave them (a server must not claim them); runs driven by workers keep it.
    /// The index `interrupts_open_by_run` is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_2_database_migrates_in_place_on_open() {
        use oris_core::id::Timestamp;
        use oris_core::status::RunStatus;
        use oris_core::store::{Store, WorkerRecord};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "wal").unwrap();
            migrate_to(&mut conn, &path, 2).unwrap();
            let v: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, 2);
            v1_run(&conn, 1, &RunStatus::Running, 1_000);
            v1_run(&conn, 2, &RunStatus::Running, 1_100);
            v1_run(&conn, 3, &RunStatus::Queued, 1_200);
            let waiting = RunStatus::Waiting {
                until: Some(Timestamp(9_000)),
                events: vec![],
            };
            v1_run(&conn, 4, &waiting, 1_300);
            v1_run(&conn, 5, &waiting, 1_400);
            // Run 1's lease expired at 5,000 (epoch 3), run 2's lasts until 50,000; run 3 is
            // queued, unleased. Runs 4 and 5 wait until 9,000: run 4 in-process (never
            // claimed), run 5 after a worker's lease ended (epoch 2).
            conn.execute_batch(
                "UPDATE runs SET lease_epoch = 3, lease_worker = 'w-old', lease_expires = 5000,
                                 ready_at = 5000 WHERE key = 1;
                 UPDATE runs SET lease_epoch = 1, lease_worker = 'w-live', lease_expires = 50000,
                                 ready_at = 50000 WHERE key = 2;
                 UPDATE runs SET ready_at = created_at WHERE key = 3;
                 UPDATE runs SET ready_at = 9000 WHERE key = 4;
                 UPDATE runs SET ready_at = 9000, lease_epoch = 2 WHERE key = 5;",
            )
            .unwrap();
        }

        let store = crate::SqliteStore::open(&path, crate::SqliteOptions::default())
            .await
            .unwrap();
        let ready: Vec<(i64, Option<i64>)> = store
            .runs(&oris_core::store::RunFilter::default())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.created_at.0, r.ready_at.map(|t| t.0)))
            .collect();
        assert_eq!(
            ready,
            vec![
                (1_000, Some(5_000)),
                (1_100, Some(50_000)),
                (1_200, Some(1_200)),
                (1_300, None),
                (1_400, Some(9_000)),
            ],
            "the library's waiting run is no longer claimable"
        );
        assert_eq!(
            store.lease_counts(Timestamp(1_000)).await.unwrap(),
            vec![("g".to_owned(), 2)]
        );
        assert_eq!(
            store.lease_counts(Timestamp(10_000)).await.unwrap(),
            vec![("g".to_owned(), 1)]
        );
        let reaped = store.reap_leases(Timestamp(10_000), 10).await.unwrap();
        assert_eq!(reaped.len(), 1, "{reaped:?}");
        let r = &reaped[0];
        assert_eq!(
            (r.created_at, r.lease_epoch, &r.lease, r.ready_at),
            (Timestamp(1_000), 3, &None, Some(Timestamp(5_000)))
        );
        assert_eq!(store.run(r.run_id).await.unwrap().as_ref(), Some(r));
        assert_eq!(
            store.lease_counts(Timestamp(1_000)).await.unwrap(),
            vec![("g".to_owned(), 1)],
            "the reaped lease is gone"
        );

        assert_eq!(store.workers().await.unwrap(), vec![]);
        let w = WorkerRecord {
            worker_id: "w-new".into(),
            graphs: vec![("g".into(), "1".into())],
            capacity: 2,
            registered_at: Timestamp(20_000),
            last_seen: Timestamp(20_000),
            stopped_at: None,
        };
        store.register_worker(&w).await.unwrap();
        assert!(
            store
                .touch_worker("w-new", Timestamp(21_000))
                .await
                .unwrap()
        );
        assert_eq!(
            store.workers().await.unwrap(),
            vec![WorkerRecord {
                last_seen: Timestamp(21_000),
                ..w
            }]
        );
        // The pending runs of `enqueue` arrive with version 3 too.
        let thread = oris_core::id::ThreadId::new("t1").unwrap();
        let pending = |n: i64| oris_core::store::PendingRun {
            run_id: oris_core::id::RunId::generate(),
            thread_id: thread.clone(),
            position: 0,
            graph: "g".into(),
            graph_version: "1".into(),
            request: oris_core::event::Payload::encode(&n).unwrap(),
            created_at: Timestamp(30_000 + n),
        };
        let (a, b) = (pending(1), pending(2));
        assert_eq!(store.push_pending(&a).await.unwrap(), 1);
        assert_eq!(store.push_pending(&b).await.unwrap(), 2);
        assert_eq!(
            store.pending_runs(&thread).await.unwrap(),
            vec![
                oris_core::store::PendingRun { position: 1, ..a },
                oris_core::store::PendingRun { position: 2, ..b }
            ]
        );
        assert_eq!(
            store.pending_threads(10).await.unwrap(),
            vec![],
            "thread t1 has an unfinished run"
        );
        drop(store);

        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, LATEST);
        let pending: i64 = conn
            .query_row("SELECT count(*) FROM pending_runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(pending, 2);
        let (runs, index, gone): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM runs),
                        (SELECT count(*) FROM sqlite_master
                         WHERE type = 'index' AND name = 'runs_leased'),
                        (SELECT count(*) FROM sqlite_master
                         WHERE type = 'index' AND name = 'interrupts_open_by_run')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((runs, index, gone), (5, 1, 0));
    }

    #[test]
    fn migrates_an_empty_database_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, LATEST);
    }
}
