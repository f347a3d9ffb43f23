//! The schema, as ordered migrations, and the code that applies them.
//!
//! Versions are rows of `oris_schema_migrations (version, applied_at)` in the store's
//! schema. Migration `i` (0-based) takes the database from version `i` to `i + 1`. All
//! pending migrations run in **one transaction under a transaction-level advisory lock**
//! (keyed by the schema name), so two processes starting at once serialize: the second
//! finds the work done. DDL is transactional in PostgreSQL, so a failed migration leaves
//! nothing behind. A database whose version is above [`LATEST`] was written by a newer
//! Oris and is refused ([`Error::Incompatible`]) rather than guessed at.
//!
//! Design notes:
//! - Integer surrogate keys (`bigint` identities) for threads and runs keep the event rows
//!   small; run, interrupt and delivery ids are `uuid` (16 bytes, readable in `psql`).
//! - JSON is stored as `text`, not `jsonb`: payloads must come back byte for byte
//!   (`jsonb` reorders keys and drops whitespace). Large values are compressed by
//!   PostgreSQL's TOAST (over ~2 KB), so snapshots need no compression of their own. Run
//!   metadata too; filters cast it to `jsonb` (`metadata::jsonb ->> $key = $value`).
//! - `events` has no foreign keys: a foreign-key check is a trigger per inserted row, and
//!   the log is the hottest table. The store is its only writer, deletes a thread's events
//!   with the thread, and every read validates the row (a dangling run key is corrupt).
//! - Times are milliseconds since the Unix epoch (`bigint`), as in the core's `Timestamp`.

use oris_core::store::Error;

/// Version 1: threads, runs, the event log, one snapshot per thread, interrupts and
/// deliveries. `{S}.` stands for the store's schema (quoted), filled in at connect time.
///
/// Keep the `CHECK` lists in sync with `StatusKind::ALL` and the event kind codes in
/// `codec.rs`; unit tests compare them.
pub(crate) const V1: &str = r#"
CREATE TABLE {S}.threads (
    key            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    thread_id      text   NOT NULL UNIQUE,
    graph          text   NOT NULL,
    head           bigint NOT NULL CHECK (head >= 0),
    active_run_key bigint,
    last_run_key   bigint,
    created_at     bigint NOT NULL,
    updated_at     bigint NOT NULL
);

CREATE TABLE {S}.runs (
    key           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        uuid   NOT NULL UNIQUE,
    thread_key    bigint NOT NULL REFERENCES {S}.threads (key),
    graph         text   NOT NULL,
    graph_version text   NOT NULL,
    status        text   NOT NULL
                  CHECK (status IN ('queued', 'running', 'interrupted', 'waiting', 'completed', 'failed', 'cancelled')),
    status_data   text   NOT NULL,
    first_seq     bigint NOT NULL,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL,
    -- When a waiting run must be woken up (ms since the epoch); NULL otherwise.
    wake_at       bigint
);

ALTER TABLE {S}.threads
    ADD FOREIGN KEY (active_run_key) REFERENCES {S}.runs (key),
    ADD FOREIGN KEY (last_run_key) REFERENCES {S}.runs (key);

CREATE INDEX runs_by_thread ON {S}.runs (thread_key, run_id);

-- Waiting runs by wake-up time: what a timer sweep reads.
CREATE INDEX runs_due ON {S}.runs (wake_at) WHERE wake_at IS NOT NULL;

-- Only unfinished runs are in it, so finished runs cost nothing here; recovery lists it.
-- Queries must repeat this predicate with literals for the planner to use the index.
CREATE INDEX runs_unfinished ON {S}.runs (run_id)
    WHERE status IN ('queued', 'running', 'interrupted', 'waiting');

-- kind codes: 0 node_completed, 1 run_started, 2 node_failed, 3 run_completed,
-- 4 run_failed, 5 run_cancelled, 6 step_recorded, 7 interrupt_raised, 8 interrupt_resumed,
-- 9 run_suspended, 10 run_resumed, 11 event_received, 12 run_rebased, 13 state_updated,
-- 14 history_pruned.
CREATE TABLE {S}.events (
    thread_key bigint   NOT NULL,
    seq        bigint   NOT NULL CHECK (seq > 0),
    run_key    bigint   NOT NULL,
    at         bigint   NOT NULL,
    kind       smallint NOT NULL CHECK (kind IN (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)),
    superstep  bigint,
    task       bigint,
    node       text,
    attempt    bigint,
    data       text,
    extra      text,
    PRIMARY KEY (thread_key, seq)
);

-- One row per thread: a new snapshot replaces the previous one. The log is the source of
-- truth; the snapshot only saves replaying it.
CREATE TABLE {S}.snapshots (
    thread_key     bigint PRIMARY KEY REFERENCES {S}.threads (key),
    at_seq         bigint NOT NULL,
    run_key        bigint NOT NULL REFERENCES {S}.runs (key),
    next_superstep bigint NOT NULL,
    state          text   NOT NULL,
    boundary       text   NOT NULL,
    created_at     bigint NOT NULL
);

-- Interrupts raised by runs, with the resume value once recorded and the seq of the
-- `interrupt_resumed` event that applied it.
CREATE TABLE {S}.interrupts (
    key          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    interrupt_id uuid   NOT NULL UNIQUE,
    thread_key   bigint NOT NULL REFERENCES {S}.threads (key),
    run_key      bigint NOT NULL REFERENCES {S}.runs (key),
    node         text   NOT NULL,
    payload      text   NOT NULL,
    raised_seq   bigint NOT NULL,
    raised_at    bigint NOT NULL,
    answer       text,
    answered_at  bigint,
    applied_seq  bigint,
    CHECK ((answer IS NULL) = (answered_at IS NULL))
);

CREATE INDEX interrupts_by_thread ON {S}.interrupts (thread_key, raised_seq);

-- External events sent to threads, in arrival order (`key`), until an `event_received`
-- event consumes them (`consumed_seq`). `idem_key` is the sender's idempotency key.
CREATE TABLE {S}.deliveries (
    key          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  uuid   NOT NULL UNIQUE,
    thread_key   bigint NOT NULL REFERENCES {S}.threads (key),
    name         text   NOT NULL,
    payload      text   NOT NULL,
    idem_key     text,
    sent_at      bigint NOT NULL,
    consumed_seq bigint
);

CREATE INDEX deliveries_by_thread ON {S}.deliveries (thread_key, key);

CREATE INDEX deliveries_pending ON {S}.deliveries (thread_key, key) WHERE consumed_seq IS NULL;

CREATE UNIQUE INDEX deliveries_by_idem_key ON {S}.deliveries (thread_key, idem_key)
    WHERE idem_key IS NOT NULL;
"#;

/// Version 2: what a control-plane server keeps beside the threads — run priority,
/// metadata, readiness and leases, idempotency records, API keys and the audit log.
///
/// `ready_at` is when a run may be claimed (NULL: not claimable), maintained by every
/// write as the core's rules say; `wake_at` keeps its meaning (the timer of a waiting run,
/// for `due_runs`). Existing runs are backfilled by the same rules: queued ones are ready
/// since their creation, waiting ones at their timer or the earliest pending delivery they
/// wait for, interrupted ones whose open interrupts are all answered at the last answer;
/// running ones are unleased and stay with the process that drives them.
pub(crate) const V2: &str = r#"
ALTER TABLE {S}.runs
    ADD COLUMN priority      integer NOT NULL DEFAULT 0,
    -- A JSON object of strings, as text (returned byte for byte); filtered as jsonb.
    ADD COLUMN metadata      text,
    ADD COLUMN ready_at      bigint,
    ADD COLUMN lease_epoch   bigint  NOT NULL DEFAULT 0 CHECK (lease_epoch >= 0),
    ADD COLUMN lease_worker  text,
    ADD COLUMN lease_expires bigint,
    ADD CONSTRAINT runs_lease_check CHECK ((lease_worker IS NULL) = (lease_expires IS NULL));

UPDATE {S}.runs SET ready_at = created_at WHERE status = 'queued';

UPDATE {S}.runs r SET ready_at = (
    SELECT min(v.t) FROM (VALUES (r.wake_at), ((
        SELECT min(d.sent_at) FROM {S}.deliveries d
        WHERE d.thread_key = r.thread_key AND d.consumed_seq IS NULL
          AND d.name IN (SELECT jsonb_array_elements_text(
                             coalesce(r.status_data::jsonb -> 'events', '[]'::jsonb)))
    ))) AS v (t))
WHERE r.status = 'waiting';

UPDATE {S}.runs r SET ready_at = a.last_answer
FROM (SELECT i.run_key, max(i.answered_at) AS last_answer,
             bool_and(i.answer IS NOT NULL) AS all_answered
      FROM {S}.interrupts i WHERE i.applied_seq IS NULL GROUP BY i.run_key) a
WHERE r.status = 'interrupted' AND a.run_key = r.key AND a.all_answered;

-- Claiming: runs in claim order, only those that are or will become claimable (ready_at is
-- NULL for finished runs). Queries must repeat this predicate with literals.
CREATE INDEX runs_claim ON {S}.runs (priority DESC, ready_at, run_id)
    WHERE ready_at IS NOT NULL AND status IN ('queued', 'running', 'interrupted', 'waiting');

-- Interrupts not applied yet: what an operator's inbox lists.
CREATE INDEX interrupts_open ON {S}.interrupts (interrupt_id) WHERE applied_seq IS NULL;

-- Idempotency keys of state-changing requests, per caller (`scope`). A reservation holds
-- the key until `locked_until`; the response is stored once the request finished.
CREATE TABLE {S}.idempotency (
    scope           text    NOT NULL,
    key             text    NOT NULL,
    request_hash    text    NOT NULL,
    created_at      bigint  NOT NULL,
    expires_at      bigint  NOT NULL,
    locked_until    bigint  NOT NULL,
    response_status integer CHECK (response_status BETWEEN 0 AND 65535),
    response_body   text,
    PRIMARY KEY (scope, key),
    CHECK ((response_status IS NULL) = (response_body IS NULL))
);

CREATE INDEX idempotency_expiry ON {S}.idempotency (expires_at);

-- API keys: only a keyed hash of the secret.
CREATE TABLE {S}.api_keys (
    key_id      text   PRIMARY KEY,
    name        text   NOT NULL,
    role        text   NOT NULL,
    secret_hash text   NOT NULL,
    created_at  bigint NOT NULL,
    revoked_at  bigint
);

-- The audit log. Appends are serialized (see `write::append_audit`), so ids become visible
-- in increasing order and a reader paging by id never skips one.
CREATE TABLE {S}.audit (
    id         bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         bigint  NOT NULL,
    actor      text    NOT NULL,
    role       text    NOT NULL,
    action     text    NOT NULL,
    target     text,
    request_id text    NOT NULL,
    status     integer NOT NULL CHECK (status BETWEEN 0 AND 65535),
    outcome    text    NOT NULL,
    details    text
);

CREATE INDEX audit_by_actor ON {S}.audit (actor, id);

CREATE INDEX audit_by_action ON {S}.audit (action, id);
"#;

/// Version 3: remote workers and the lease reaper — the worker registry, and an index of
/// leased runs by lease expiry — and the pending runs of the multitask strategy `enqueue`.
///
/// `runs_leased` holds only leased runs (at most the workers' total capacity, however
/// large the backlog): the reaper locks the expired leases at its head, earliest first,
/// skipping rows others hold, and lease counts read the live ones at its tail. (The claim
/// index cannot serve them: it is ordered by priority first, and every queued run ready by
/// now sits among the expired leases in it.) Existing runs need no backfill: the index is
/// built from their lease columns.
pub(crate) const V3: &str = r#"
CREATE INDEX runs_leased ON {S}.runs (lease_expires, run_id) WHERE lease_worker IS NOT NULL;

-- Remote workers, registered by their polls. `graphs` is the JSON array of the
-- [name, version] pairs a worker executes, as text; `registered_at` is kept across
-- re-registrations; `stopped_at` is set by a graceful stop and cleared by the next
-- registration.
CREATE TABLE {S}.workers (
    worker_id     text   PRIMARY KEY,
    graphs        text   NOT NULL,
    capacity      bigint NOT NULL CHECK (capacity BETWEEN 0 AND 4294967295),
    registered_at bigint NOT NULL,
    last_seen     bigint NOT NULL,
    stopped_at    bigint
);

-- Runs waiting for their thread (multitask strategy `enqueue`): started, lowest position
-- first, when the thread's unfinished run ends. `request` is the create request as JSON
-- text (input and run options); `position` is per thread, one more than the highest
-- pending one. The unique constraint serves a thread's queue in order and its highest
-- position, and makes concurrent pushes on one thread take distinct positions.
CREATE TABLE {S}.pending_runs (
    run_id        uuid   PRIMARY KEY,
    thread_id     text   NOT NULL,
    position      bigint NOT NULL CHECK (position > 0),
    graph         text   NOT NULL,
    graph_version text   NOT NULL,
    request       text   NOT NULL,
    created_at    bigint NOT NULL,
    UNIQUE (thread_id, position)
);

-- Runs driven in-process by the library (never queued, never leased) are never claimable
-- (`driven_by_workers`): version 2 gave some of them a `ready_at`.
UPDATE {S}.runs SET ready_at = NULL
WHERE ready_at IS NOT NULL AND lease_epoch = 0 AND status <> 'queued';
"#;

/// The migrations, in order; `MIGRATIONS[i]` upgrades version `i` to `i + 1`. Released
/// migrations never change: a change is a new one.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this code writes and understands.
pub const LATEST: i32 = MIGRATIONS.len() as i32;

/// Creates the schema (if not `public`) and the versions table; idempotent.
pub(crate) const PREPARE: &str = "
CREATE TABLE IF NOT EXISTS {S}.oris_schema_migrations (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// The version a database is at, given the highest recorded one.
///
/// # Errors
/// [`Error::Incompatible`] when it is newer than [`LATEST`] or negative.
pub(crate) fn check_version(found: Option<i32>, where_: &str) -> Result<i32, Error> {
    let version = found.unwrap_or(0);
    if version > LATEST {
        return Err(Error::Incompatible(format!(
            "{where_} has schema version {version}, newer than version {LATEST}, the newest \
             this build of oris-postgres knows; use a newer Oris"
        )));
    }
    if version < 0 {
        return Err(Error::Incompatible(format!(
            "{where_} has an invalid schema version {version}"
        )));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{kind_code, kind_from_code};
    use oris_core::event::EventKind;
    use oris_core::status::StatusKind;

    fn check_list(marker: &str) -> Vec<String> {
        check_list_in(V1, marker)
    }

    fn check_list_in(text: &str, marker: &str) -> Vec<String> {
        let start = text.find(marker).expect("marker in schema") + marker.len();
        let end = start + text[start..].find(')').expect("closing parenthesis");
        text[start..end]
            .split(',')
            .map(|s| s.trim().trim_matches('\'').to_owned())
            .collect()
    }

    #[test]
    fn status_check_lists_every_status_kind() {
        let expected: Vec<String> = StatusKind::ALL
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect();
        assert_eq!(check_list("CHECK (status IN ("), expected);
        let unfinished: Vec<String> = StatusKind::ALL
            .iter()
            .filter(|k| !k.is_terminal())
            .map(|k| k.as_str().to_owned())
            .collect();
        assert_eq!(check_list("WHERE status IN ("), unfinished);
        // The claim index holds unfinished runs only.
        assert_eq!(
            check_list_in(V2, "WHERE ready_at IS NOT NULL AND status IN ("),
            unfinished
        );
    }

    #[test]
    fn kind_check_lists_every_event_kind_code() {
        let mut listed: Vec<i16> = check_list("CHECK (kind IN (")
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        listed.sort_unstable();
        let mut expected: Vec<i16> = EventKind::ALL
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
    fn newer_versions_are_refused_naming_both() {
        assert_eq!(check_version(None, "db").unwrap(), 0);
        assert_eq!(check_version(Some(LATEST), "db").unwrap(), LATEST);
        let e = check_version(Some(LATEST + 1), "db")
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("version {}", LATEST + 1)), "{e}");
        assert!(e.contains(&format!("version {LATEST}")), "{e}");
    }
}
