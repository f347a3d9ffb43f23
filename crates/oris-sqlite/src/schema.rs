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

/// The migrations, in order; `MIGRATIONS[i]` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1];

/// The schema version this code writes and understands.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings the database at `path` (open on `conn`) to [`LATEST`].
///
/// # Errors
/// [`Error::Incompatible`] when the database is newer than this code, [`Error::Unavailable`]
/// on an SQLite error.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
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
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(step).map_err(sql)?;
        tracing::info!(path = %path.display(), version = i + 1, "sqlite schema migrated");
    }
    tx.pragma_update(None, "user_version", LATEST)
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
