//! Every SQL statement of the backend (the schema is in `schema.rs`).
//!
//! Column lists and the row decoders in `read.rs` go together: a decoder reads columns by
//! the position they have here.

use oris_core::status::StatusKind;
use oris_core::store::{AuditFilter, InterruptFilter, RunFilter};
use rusqlite::types::Value;

use crate::codec::{interrupt_id_blob, run_id_blob};

/// Write-ahead logging: readers and the writer do not block each other.
pub(crate) const JOURNAL_WAL: &str = "PRAGMA journal_mode = WAL";
/// Settings of the write connection (durability is then set per group).
pub(crate) const WRITER_SETUP: &str = "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;";
/// fsync the WAL at every commit: for groups holding a `Sync` or `Exit` commit.
pub(crate) const SYNC_FULL: &str = "PRAGMA synchronous = FULL";
/// Write the WAL without fsync: for groups of `Batched` commits only.
pub(crate) const SYNC_NORMAL: &str = "PRAGMA synchronous = NORMAL";
/// Starts a group transaction, taking the write lock at once (waiting up to the busy
/// timeout) rather than at the first write, so a group never fails half-way on the lock.
pub(crate) const BEGIN: &str = "BEGIN IMMEDIATE";
pub(crate) const COMMIT: &str = "COMMIT";
pub(crate) const ROLLBACK: &str = "ROLLBACK";
/// One write inside a group.
pub(crate) const SAVEPOINT: &str = "SAVEPOINT c";
pub(crate) const RELEASE: &str = "RELEASE c";
pub(crate) const ROLLBACK_TO: &str = "ROLLBACK TO c";

/// A thread by id, with the ids of its active and last runs.
/// Columns: 0 key, 1 graph, 2 head, 3 created_at, 4 updated_at, 5 active_run_key,
/// 6 active run_id, 7 active run created_at, 8 last_run_key, 9 last run_id.
pub(crate) const THREAD_BY_ID: &str = "\
SELECT t.key, t.graph, t.head, t.created_at, t.updated_at,
       t.active_run_key, a.run_id, a.created_at, t.last_run_key, l.run_id
FROM threads t
LEFT JOIN runs a ON a.key = t.active_run_key
LEFT JOIN runs l ON l.key = t.last_run_key
WHERE t.thread_id = ?1";

/// A thread's key.
pub(crate) const THREAD_KEY: &str = "SELECT key FROM threads WHERE thread_id = ?1";

/// Creates a thread (its runs and head are set by [`UPDATE_THREAD`] in the same commit).
pub(crate) const INSERT_THREAD: &str = "\
INSERT INTO threads (thread_id, graph, head, created_at, updated_at) VALUES (?1, ?2, 0, ?3, ?3)";

/// Moves a thread's head and run pointers.
pub(crate) const UPDATE_THREAD: &str = "\
UPDATE threads SET head = ?2, active_run_key = ?3, last_run_key = ?4, updated_at = ?5
WHERE key = ?1";

/// The columns of a run record, joined with its thread, as a literal for `concat!`.
/// Columns: 0 key, 1 run_id, 2 thread_key, 3 thread_id, 4 graph, 5 graph_version,
/// 6 status, 7 status_data, 8 first_seq, 9 created_at, 10 updated_at, 11 priority,
/// 12 metadata, 13 ready_at, 14 lease_epoch, 15 lease_worker, 16 lease_expires.
macro_rules! run_select {
    () => {
        "\
SELECT r.key, r.run_id, r.thread_key, t.thread_id, r.graph, r.graph_version,
       r.status, r.status_data, r.first_seq, r.created_at, r.updated_at, r.priority,
       r.metadata, r.ready_at, r.lease_epoch, r.lease_worker, r.lease_expires
FROM runs r
JOIN threads t ON t.key = r.thread_key"
    };
}

/// A run by id (columns of `run_select!`).
pub(crate) const RUN_BY_ID: &str = concat!(run_select!(), "\nWHERE r.run_id = ?1");

/// A run's key, thread and creation time, by id.
pub(crate) const RUN_REF_BY_ID: &str =
    "SELECT key, thread_key, created_at FROM runs WHERE run_id = ?1";

/// Creates a run (unleased, epoch 0).
pub(crate) const INSERT_RUN: &str = "\
INSERT INTO runs (run_id, thread_key, graph, graph_version, status, status_data, first_seq,
                  created_at, updated_at, wake_at, priority, metadata, ready_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// Sets a run's unfinished status, with the readiness and lease that go with it
/// (`plan_commit`). It leaves `ended` alone, so `runs_unfinished` is not written.
pub(crate) const UPDATE_RUN_STATUS: &str = "\
UPDATE runs SET status = ?2, status_data = ?3, updated_at = ?4, wake_at = ?5, ready_at = ?6,
                lease_worker = ?7, lease_expires = ?8
WHERE key = ?1";

/// Sets a run's final status like [`UPDATE_RUN_STATUS`], and marks it ended (out of
/// `runs_unfinished`).
pub(crate) const END_RUN: &str = "\
UPDATE runs SET status = ?2, status_data = ?3, updated_at = ?4, wake_at = ?5, ready_at = ?6,
                lease_worker = ?7, lease_expires = ?8, ended = 1
WHERE key = ?1";

/// Sets when a run may be claimed (an answer or a delivery made it ready).
pub(crate) const SET_READY: &str = "UPDATE runs SET ready_at = ?2 WHERE key = ?1";

/// The highest priority below `?1` among claimable runs (a seek on `runs_ready`).
pub(crate) const NEXT_READY_PRIORITY: &str = "\
SELECT priority FROM runs WHERE ready_at IS NOT NULL AND priority < ?1
ORDER BY priority DESC LIMIT 1";

/// Runs of priority `?1` ready at `?2`, in claim order (a range of `runs_ready`; columns
/// of `run_select!`). The caller reads only as many as it claims.
pub(crate) const READY_RUNS: &str = concat!(
    run_select!(),
    "\nWHERE r.ready_at IS NOT NULL AND r.priority = ?1 AND r.ready_at <= ?2",
    "\nORDER BY r.ready_at, r.run_id"
);

/// Writes a claim: status (a queued run starts running), readiness and the new lease.
pub(crate) const CLAIM_RUN: &str = "\
UPDATE runs SET status = ?2, status_data = ?3, updated_at = ?4, ready_at = ?5,
                lease_epoch = ?6, lease_worker = ?7, lease_expires = ?8
WHERE key = ?1";

/// Writes a renewed or released lease and the readiness that goes with it.
pub(crate) const SET_LEASE: &str = "\
UPDATE runs SET ready_at = ?2, lease_worker = ?3, lease_expires = ?4 WHERE key = ?1";

/// Leased runs whose lease expired at `?1`, earliest expiry first, at most `?2` (the head
/// of `runs_leased`; columns of `run_select!`): what the reaper clears.
pub(crate) const EXPIRED_LEASES: &str = concat!(
    run_select!(),
    "\nWHERE r.lease_worker IS NOT NULL AND r.lease_expires <= ?1",
    "\nORDER BY r.lease_expires, r.run_id\nLIMIT ?2"
);

/// Runs holding a lease unexpired at `?1`, counted per graph, by graph name (the tail of
/// `runs_leased`). Columns: 0 graph, 1 count.
pub(crate) const LEASE_COUNTS: &str = "\
SELECT r.graph, count(*) FROM runs r
WHERE r.lease_worker IS NOT NULL AND r.lease_expires > ?1
GROUP BY r.graph
ORDER BY r.graph";

/// Waiting runs due at `?1`, earliest first, at most `?2` (columns of `run_select!`).
pub(crate) const DUE_RUNS: &str = concat!(
    run_select!(),
    "\nWHERE r.wake_at IS NOT NULL AND r.wake_at <= ?1\nORDER BY r.wake_at, r.run_id\nLIMIT ?2"
);

/// Appends an event.
pub(crate) const INSERT_EVENT: &str = "\
INSERT INTO events (id, run_key, at, kind, superstep, task, node, attempt, data, extra)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Events with `?1 < id <= ?2`, in order, at most `?3`.
/// Columns: 0 id, 1 run_key, 2 run_id, 3 run created_at, 4 at, 5 kind, 6 superstep,
/// 7 task, 8 node, 9 attempt, 10 data, 11 extra.
pub(crate) const EVENTS_RANGE: &str = "\
SELECT e.id, e.run_key, r.run_id, r.created_at, e.at, e.kind, e.superstep, e.task, e.node,
       e.attempt, e.data, e.extra
FROM events e
LEFT JOIN runs r ON r.key = e.run_key
WHERE e.id > ?1 AND e.id <= ?2
ORDER BY e.id
LIMIT ?3";

/// Deletes events with `?1 <= id <= ?2`.
pub(crate) const DELETE_EVENTS_RANGE: &str = "DELETE FROM events WHERE id >= ?1 AND id <= ?2";

/// Deletes a thread's interrupts applied before seq `?2` (pruning).
pub(crate) const PRUNE_INTERRUPTS: &str =
    "DELETE FROM interrupts WHERE thread_key = ?1 AND applied_seq < ?2";

/// Deletes a thread's deliveries consumed before seq `?2` (pruning).
pub(crate) const PRUNE_DELIVERIES: &str =
    "DELETE FROM deliveries WHERE thread_key = ?1 AND consumed_seq < ?2";

/// Deletes everything of a thread, children first (foreign keys).
pub(crate) const DELETE_THREAD: [&str; 7] = [
    "DELETE FROM pending_runs WHERE thread_id = (SELECT thread_id FROM threads WHERE key = ?1)",
    "DELETE FROM deliveries WHERE thread_key = ?1",
    "DELETE FROM interrupts WHERE thread_key = ?1",
    "DELETE FROM snapshots WHERE thread_key = ?1",
    "UPDATE threads SET active_run_key = NULL, last_run_key = NULL WHERE key = ?1",
    "DELETE FROM runs WHERE thread_key = ?1",
    "DELETE FROM threads WHERE key = ?1",
];

/// Writes a thread's snapshot, replacing the previous one.
pub(crate) const UPSERT_SNAPSHOT: &str = "\
INSERT INTO snapshots (thread_key, at_seq, run_key, next_superstep, state, boundary, created_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (thread_key) DO UPDATE SET
    at_seq = excluded.at_seq, run_key = excluded.run_key,
    next_superstep = excluded.next_superstep, state = excluded.state,
    boundary = excluded.boundary, created_at = excluded.created_at";

/// A thread's snapshot if it stands at or before `?2`.
/// Columns: 0 at_seq, 1 run_key, 2 run_id, 3 next_superstep, 4 state, 5 boundary,
/// 6 created_at.
pub(crate) const SNAPSHOT: &str = "\
SELECT s.at_seq, s.run_key, r.run_id, s.next_superstep, s.state, s.boundary, s.created_at
FROM snapshots s
LEFT JOIN runs r ON r.key = s.run_key
WHERE s.thread_key = ?1 AND s.at_seq <= ?2";

/// Deletes a thread's snapshot.
pub(crate) const DELETE_SNAPSHOTS: &str = "DELETE FROM snapshots WHERE thread_key = ?1";

/// Whether an interrupt id is taken.
pub(crate) const INTERRUPT_EXISTS: &str = "SELECT 1 FROM interrupts WHERE interrupt_id = ?1";

/// Records a raised interrupt.
pub(crate) const INSERT_INTERRUPT: &str = "\
INSERT INTO interrupts (interrupt_id, thread_key, run_key, node, payload, raised_seq, raised_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Marks an interrupt applied by the `InterruptResumed` event at seq `?2`, taking that
/// event's value `?3` (at time `?4`) as its answer when none was recorded.
pub(crate) const APPLY_INTERRUPT: &str = "\
UPDATE interrupts SET applied_seq = ?2, answer = coalesce(answer, ?3),
                      answered_at = coalesce(answered_at, ?4)
WHERE interrupt_id = ?1";

/// Records an interrupt's answer.
pub(crate) const ANSWER_INTERRUPT: &str =
    "UPDATE interrupts SET answer = ?2, answered_at = ?3 WHERE key = ?1";

/// The columns of an interrupt record with its thread and its run's status, as a literal
/// for `concat!`. Columns: 0 key, 1 interrupt_id, 2 thread_key, 3 thread_id, 4 run_key,
/// 5 run_id, 6 node, 7 payload, 8 raised_seq, 9 raised_at, 10 answer, 11 answered_at,
/// 12 applied_seq, 13 run status, 14 run status_data, 15 run lease_epoch.
macro_rules! interrupt_select {
    () => {
        "\
SELECT i.key, i.interrupt_id, i.thread_key, t.thread_id, i.run_key, r.run_id, i.node,
       i.payload, i.raised_seq, i.raised_at, i.answer, i.answered_at, i.applied_seq,
       r.status, r.status_data, r.lease_epoch
FROM interrupts i
LEFT JOIN threads t ON t.key = i.thread_key
LEFT JOIN runs r ON r.key = i.run_key"
    };
}

/// An interrupt by id (columns of `interrupt_select!`).
pub(crate) const INTERRUPT_BY_ID: &str =
    concat!(interrupt_select!(), "\nWHERE i.interrupt_id = ?1");

/// The open (not applied) interrupts of the run with key `?3`, of thread `?1`, starting at
/// seq `?2` (columns of `interrupt_select!`): a range of `interrupts_by_thread` from the
/// run's first seq, which holds only this run's interrupts when it is the thread's latest
/// run (the only run whose answers or suspension make it ready).
pub(crate) const OPEN_INTERRUPTS_OF_RUN: &str = concat!(
    interrupt_select!(),
    "\nWHERE i.thread_key = ?1 AND i.raised_seq >= ?2 AND i.run_key = ?3 AND i.applied_seq IS NULL"
);

/// A thread's interrupts by its key, in raised order (columns of `interrupt_select!`).
pub(crate) const INTERRUPTS_OF_THREAD: &str = concat!(
    interrupt_select!(),
    "\nWHERE i.thread_key = ?1\nORDER BY i.raised_seq"
);

/// The columns of a delivery, as a literal for `concat!`. Columns: 0 key, 1 delivery_id,
/// 2 name, 3 payload, 4 idem_key, 5 sent_at, 6 consumed_seq.
macro_rules! delivery_select {
    () => {
        "\
SELECT d.key, d.delivery_id, d.name, d.payload, d.idem_key, d.sent_at, d.consumed_seq
FROM deliveries d"
    };
}

/// A thread's deliveries by its key, in arrival order (columns of `delivery_select!`).
pub(crate) const DELIVERIES_OF_THREAD: &str = concat!(
    delivery_select!(),
    "\nWHERE d.thread_key = ?1\nORDER BY d.key"
);

/// A thread's unconsumed deliveries by its key, in arrival order (the predicate is that of
/// the partial index `deliveries_pending`).
pub(crate) const PENDING_DELIVERIES_OF_THREAD: &str = concat!(
    delivery_select!(),
    "\nWHERE d.thread_key = ?1 AND d.consumed_seq IS NULL\nORDER BY d.key"
);

/// A thread's delivery with idempotency key `?2` (columns of `delivery_select!`).
pub(crate) const DELIVERY_BY_IDEM_KEY: &str = concat!(
    delivery_select!(),
    "\nWHERE d.thread_key = ?1 AND d.idem_key = ?2"
);

/// Buffers a delivery.
pub(crate) const INSERT_DELIVERY: &str = "\
INSERT INTO deliveries (delivery_id, thread_key, name, payload, idem_key, sent_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Names and arrival times of a thread's unconsumed deliveries by its key, in arrival order.
pub(crate) const PENDING_DELIVERY_TIMES: &str = "\
SELECT name, sent_at FROM deliveries WHERE thread_key = ?1 AND consumed_seq IS NULL ORDER BY key";

/// Marks a thread's delivery consumed by the `EventReceived` event at seq `?3`.
pub(crate) const CONSUME_DELIVERY: &str =
    "UPDATE deliveries SET consumed_seq = ?3 WHERE delivery_id = ?1 AND thread_key = ?2";

/// The run listing for `filter`, oldest first, and its parameters.
///
/// Statuses are inlined as literals (they are `StatusKind::as_str` constants, not input).
/// When every requested status is unfinished, the exact predicate of the partial index
/// `runs_unfinished` is added, so the planner can prove the index applies — it matches
/// predicates by their text.
pub(crate) fn runs(filter: &RunFilter) -> (String, Vec<Value>) {
    let mut sql = String::from(run_select!());
    let mut params = Vec::new();
    let mut clauses = Vec::new();
    if let Some(thread_id) = &filter.thread_id {
        params.push(Value::Text(thread_id.as_str().to_owned()));
        clauses.push(format!(
            "r.thread_key = (SELECT key FROM threads WHERE thread_id = ?{})",
            params.len()
        ));
    }
    if let Some(graph) = &filter.graph {
        params.push(Value::Text(graph.clone()));
        clauses.push(format!("r.graph = ?{}", params.len()));
    }
    if !filter.statuses.is_empty() {
        let list: Vec<String> = filter
            .statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        clauses.push(format!("r.status IN ({})", list.join(", ")));
        if filter.statuses.iter().all(|s| !s.is_terminal()) {
            clauses.push(UNFINISHED_INDEX_PREDICATE.to_owned());
        }
    }
    if let Some(after) = filter.after {
        params.push(Value::Blob(run_id_blob(after).to_vec()));
        clauses.push(format!("r.run_id > ?{}", params.len()));
    }
    let ranges = [
        (filter.created_from, "r.created_at >="),
        (filter.created_to, "r.created_at <"),
        (filter.updated_from, "r.updated_at >="),
        (filter.updated_to, "r.updated_at <"),
    ];
    for (bound, op) in ranges {
        if let Some(t) = bound {
            params.push(Value::Integer(t.0));
            clauses.push(format!("{op} ?{}", params.len()));
        }
    }
    if !filter.metadata.is_empty() {
        // As `RunRecord::metadata_map`: metadata that is not an object of strings has no
        // labels at all. Keys are bound, never spliced into a JSON path. Damaged JSON has no
        // labels either, rather than failing the listing (`CASE` evaluates in order; reading
        // the row back reports it as corrupt).
        const META: &str = "(CASE WHEN json_valid(r.metadata) THEN r.metadata END)";
        clauses.push(format!(
            "json_type{META} = 'object' AND NOT EXISTS \
             (SELECT 1 FROM json_each{META} m WHERE m.type <> 'text')"
        ));
        for (k, v) in &filter.metadata {
            params.push(Value::Text(k.clone()));
            params.push(Value::Text(v.clone()));
            clauses.push(format!(
                "EXISTS (SELECT 1 FROM json_each{META} m WHERE m.key = ?{} AND m.value = ?{})",
                params.len() - 1,
                params.len()
            ));
        }
    }
    finish(&mut sql, &mut params, &clauses, "r.run_id", filter.limit);
    (sql, params)
}

/// Appends the `WHERE` clauses, the order and the limit (0: none) to a listing.
fn finish(
    sql: &mut String,
    params: &mut Vec<Value>,
    clauses: &[String],
    order: &str,
    limit: usize,
) {
    for (i, clause) in clauses.iter().enumerate() {
        sql.push_str(if i == 0 { "\nWHERE " } else { "\n  AND " });
        sql.push_str(clause);
    }
    sql.push_str("\nORDER BY ");
    sql.push_str(order);
    let limit = if limit == 0 {
        -1
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    };
    params.push(Value::Integer(limit));
    sql.push_str(&format!("\nLIMIT ?{}", params.len()));
}

/// The interrupt listing for `filter`, oldest (lowest id) first, and its parameters
/// (columns of `interrupt_select!`). Open-only listings read the partial index
/// `interrupts_open`, whose predicate is repeated word for word.
pub(crate) fn interrupts(filter: &InterruptFilter) -> (String, Vec<Value>) {
    let mut sql = String::from(interrupt_select!());
    let mut params = Vec::new();
    let mut clauses = Vec::new();
    if let Some(thread_id) = &filter.thread_id {
        params.push(Value::Text(thread_id.as_str().to_owned()));
        clauses.push(format!(
            "i.thread_key = (SELECT key FROM threads WHERE thread_id = ?{})",
            params.len()
        ));
    }
    if let Some(graph) = &filter.graph {
        params.push(Value::Text(graph.clone()));
        clauses.push(format!("t.graph = ?{}", params.len()));
    }
    if filter.open_only {
        clauses.push("i.applied_seq IS NULL".to_owned());
        clauses.push(unfinished_predicate());
    }
    if let Some(after) = filter.after {
        params.push(Value::Blob(interrupt_id_blob(after).to_vec()));
        clauses.push(format!("i.interrupt_id > ?{}", params.len()));
    }
    finish(
        &mut sql,
        &mut params,
        &clauses,
        "i.interrupt_id",
        filter.limit,
    );
    (sql, params)
}

/// The audit listing for `filter`, oldest first, and its parameters (columns of
/// `AUDIT_SELECT`).
pub(crate) fn audit(filter: &AuditFilter) -> (String, Vec<Value>) {
    let mut sql = String::from(AUDIT_SELECT);
    let after = filter
        .after
        .map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
    let mut params = vec![Value::Integer(after)];
    let mut clauses = vec!["id > ?1".to_owned()];
    if let Some(actor) = &filter.actor {
        params.push(Value::Text(actor.clone()));
        clauses.push(format!("actor = ?{}", params.len()));
    }
    if let Some(action) = &filter.action {
        params.push(Value::Text(action.clone()));
        clauses.push(format!("action = ?{}", params.len()));
    }
    finish(&mut sql, &mut params, &clauses, "id", filter.limit);
    (sql, params)
}

// ---------------------------------------------------------------------------------------
// Idempotency records, API keys, audit

/// An idempotency record. Columns: 0 request_hash, 1 created_at, 2 expires_at,
/// 3 locked_until, 4 status, 5 body.
pub(crate) const IDEMPOTENCY_BY_KEY: &str = "\
SELECT request_hash, created_at, expires_at, locked_until, status, body
FROM idempotency WHERE scope = ?1 AND key = ?2";

/// Writes an idempotency record (a new or taken-over reservation).
pub(crate) const UPSERT_IDEMPOTENCY: &str = "\
INSERT INTO idempotency (scope, key, request_hash, created_at, expires_at, locked_until,
                         status, body)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT (scope, key) DO UPDATE SET
    request_hash = excluded.request_hash, created_at = excluded.created_at,
    expires_at = excluded.expires_at, locked_until = excluded.locked_until,
    status = excluded.status, body = excluded.body";

/// Stores the response of a reservation.
pub(crate) const COMPLETE_IDEMPOTENCY: &str =
    "UPDATE idempotency SET status = ?3, body = ?4 WHERE scope = ?1 AND key = ?2";

/// Drops an unfinished reservation.
pub(crate) const RELEASE_IDEMPOTENCY: &str =
    "DELETE FROM idempotency WHERE scope = ?1 AND key = ?2 AND status IS NULL";

/// Deletes records expired at `?1` (a range of `idempotency_expiry`).
pub(crate) const PURGE_IDEMPOTENCY: &str = "DELETE FROM idempotency WHERE expires_at <= ?1";

/// The columns of an API key, as a literal for `concat!`. Columns: 0 key_id, 1 name,
/// 2 role, 3 secret_hash, 4 created_at, 5 revoked_at.
macro_rules! api_key_select {
    () => {
        "SELECT key_id, name, role, secret_hash, created_at, revoked_at FROM api_keys"
    };
}

/// An API key by id.
pub(crate) const API_KEY_BY_ID: &str = concat!(api_key_select!(), " WHERE key_id = ?1");

/// Every API key, oldest first.
pub(crate) const API_KEYS: &str = concat!(api_key_select!(), " ORDER BY created_at, key_id");

/// Whether an API key id is taken.
pub(crate) const API_KEY_EXISTS: &str = "SELECT 1 FROM api_keys WHERE key_id = ?1";

/// Stores an API key.
pub(crate) const INSERT_API_KEY: &str = "\
INSERT INTO api_keys (key_id, name, role, secret_hash, created_at, revoked_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Revokes an API key that is not revoked yet.
pub(crate) const REVOKE_API_KEY: &str =
    "UPDATE api_keys SET revoked_at = ?2 WHERE key_id = ?1 AND revoked_at IS NULL";

/// Registers a worker: inserts it, or replaces every field of its record but
/// `registered_at`.
pub(crate) const UPSERT_WORKER: &str = "\
INSERT INTO workers (worker_id, graphs, capacity, registered_at, last_seen, stopped_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (worker_id) DO UPDATE SET
    graphs = excluded.graphs, capacity = excluded.capacity, last_seen = excluded.last_seen,
    stopped_at = excluded.stopped_at";

/// Moves a worker's `last_seen`.
pub(crate) const TOUCH_WORKER: &str = "UPDATE workers SET last_seen = ?2 WHERE worker_id = ?1";

/// Every worker, by id. Columns: 0 worker_id, 1 graphs, 2 capacity, 3 registered_at,
/// 4 last_seen, 5 stopped_at.
pub(crate) const WORKERS: &str = "\
SELECT worker_id, graphs, capacity, registered_at, last_seen, stopped_at FROM workers
ORDER BY worker_id";

/// Whether a pending run with this id is stored.
pub(crate) const PENDING_EXISTS: &str = "SELECT 1 FROM pending_runs WHERE run_id = ?1";

/// The highest pending position of a thread (NULL when it has none).
pub(crate) const MAX_PENDING_POSITION: &str =
    "SELECT max(position) FROM pending_runs WHERE thread_id = ?1";

/// Stores a pending run.
pub(crate) const INSERT_PENDING: &str = "\
INSERT INTO pending_runs (run_id, thread_id, position, graph, graph_version, request, created_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// A thread's pending runs, lowest position first. Columns: 0 run_id, 1 thread_id,
/// 2 position, 3 graph, 4 graph_version, 5 request, 6 created_at.
pub(crate) const PENDING_OF_THREAD: &str = "\
SELECT run_id, thread_id, position, graph, graph_version, request, created_at
FROM pending_runs WHERE thread_id = ?1 ORDER BY position";

/// Threads with pending runs and no active run, by the creation of their oldest pending
/// run. The head of each queue is its lowest position.
pub(crate) const PENDING_THREADS: &str = "\
SELECT p.thread_id FROM pending_runs p
WHERE p.position = (SELECT min(q.position) FROM pending_runs q WHERE q.thread_id = p.thread_id)
  AND NOT EXISTS (SELECT 1 FROM threads t
                  WHERE t.thread_id = p.thread_id AND t.active_run_key IS NOT NULL)
ORDER BY p.created_at, p.thread_id
LIMIT ?1";

/// Deletes a pending run.
pub(crate) const DELETE_PENDING: &str = "DELETE FROM pending_runs WHERE run_id = ?1";

/// The columns of an audit entry. Columns: 0 id, 1 at, 2 actor, 3 role, 4 action,
/// 5 target, 6 request_id, 7 status, 8 outcome, 9 details.
pub(crate) const AUDIT_SELECT: &str = "\
SELECT id, at, actor, role, action, target, request_id, status, outcome, details FROM audit";

/// Appends an audit entry.
pub(crate) const INSERT_AUDIT: &str = "\
INSERT INTO audit (at, actor, role, action, target, request_id, status, outcome, details)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// The predicate of the partial index `runs_unfinished`, word for word (modulo the table
/// alias, which the planner ignores): true exactly for runs of an unfinished status.
const UNFINISHED_INDEX_PREDICATE: &str = "r.ended IS NULL";

/// `r.status IN ('queued', 'running', 'interrupted', 'waiting')`: the run is unfinished.
fn unfinished_predicate() -> String {
    let list: Vec<String> = StatusKind::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("r.status IN ({})", list.join(", "))
}

/// Removes WAL frames already in the database file and empties the WAL.
pub(crate) const CHECKPOINT: &str = "PRAGMA wal_checkpoint(TRUNCATE)";

/// Bytes in used pages.
pub(crate) const BYTES_USED: &str = "\
SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()),
       (SELECT page_size FROM pragma_page_size())";

#[cfg(test)]
mod tests {
    use super::*;
    use oris_core::id::{RunId, ThreadId};
    use rusqlite::{Connection, params_from_iter};

    fn plan(filter: &RunFilter) -> String {
        let mut conn = Connection::open_in_memory().unwrap();
        // As in production (see `configure`): plans may not depend on bound values.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .unwrap();
        crate::schema::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        let (sql, values) = runs(filter);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(params_from_iter(values), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    /// Rebinding parameters must not re-prepare statements on the commit path (it did
    /// before the planner stability guarantee was enabled: the partial index on `runs`
    /// made every rebind expire the statement).
    #[test]
    fn statements_are_not_reprepared_on_rebind() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::configure(&conn, std::time::Duration::from_secs(1)).unwrap();
        crate::schema::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        for sql in [
            THREAD_BY_ID,
            RUN_BY_ID,
            RUN_REF_BY_ID,
            UPDATE_RUN_STATUS,
            END_RUN,
            EVENTS_RANGE,
            INTERRUPT_BY_ID,
            INTERRUPTS_OF_THREAD,
            APPLY_INTERRUPT,
            DELIVERY_BY_IDEM_KEY,
            PENDING_DELIVERIES_OF_THREAD,
            CONSUME_DELIVERY,
            INSERT_RUN,
            SET_READY,
            NEXT_READY_PRIORITY,
            READY_RUNS,
            CLAIM_RUN,
            SET_LEASE,
            OPEN_INTERRUPTS_OF_RUN,
            PENDING_DELIVERY_TIMES,
            IDEMPOTENCY_BY_KEY,
            PURGE_IDEMPOTENCY,
            EXPIRED_LEASES,
            LEASE_COUNTS,
            UPSERT_WORKER,
            TOUCH_WORKER,
            INSERT_PENDING,
            PENDING_OF_THREAD,
            PENDING_THREADS,
            DELETE_PENDING,
        ] {
            let mut stmt = conn.prepare(sql).unwrap();
            for i in 0..5i64 {
                let n = stmt.parameter_count();
                let values: Vec<Value> = (0..n).map(|j| Value::Integer(i + j as i64)).collect();
                stmt.execute(params_from_iter(values)).ok();
            }
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
    }

    #[test]
    fn unfinished_runs_use_the_partial_index() {
        let p = plan(&RunFilter::unfinished());
        assert!(p.contains("runs_unfinished"), "{p}");
        let p = plan(&RunFilter {
            statuses: vec![StatusKind::Running],
            after: Some(RunId::generate()),
            ..RunFilter::default()
        });
        assert!(p.contains("runs_unfinished"), "{p}");
    }

    #[test]
    fn runs_of_a_thread_use_the_thread_index() {
        let p = plan(&RunFilter {
            thread_id: Some(ThreadId::new("t").unwrap()),
            ..RunFilter::default()
        });
        assert!(p.contains("runs_by_thread"), "{p}");
    }

    fn plan_of(sql: &str) -> String {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::configure(&conn, std::time::Duration::from_secs(1)).unwrap();
        crate::schema::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let n = stmt.parameter_count();
        let values: Vec<Value> = (0..n).map(|_| Value::Integer(1)).collect();
        let rows = stmt
            .query_map(params_from_iter(values), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn interrupt_and_delivery_reads_use_their_indexes() {
        for (sql, index) in [
            (INTERRUPT_BY_ID, "sqlite_autoindex_interrupts_1"),
            (INTERRUPT_EXISTS, "sqlite_autoindex_interrupts_1"),
            (INTERRUPTS_OF_THREAD, "interrupts_by_thread"),
            (DELIVERIES_OF_THREAD, "deliveries_by_thread"),
            (PENDING_DELIVERIES_OF_THREAD, "deliveries_pending"),
            (DELIVERY_BY_IDEM_KEY, "deliveries_by_idem_key"),
            (CONSUME_DELIVERY, "sqlite_autoindex_deliveries_1"),
            (APPLY_INTERRUPT, "sqlite_autoindex_interrupts_1"),
        ] {
            let p = plan_of(sql);
            assert!(p.contains(index), "{sql}\n{p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
        }
    }

    /// A claim seeks: the highest priority by the partial index, then that priority's
    /// ready runs as a range of it, already in claim order (no sort, no scan of runs).
    #[test]
    fn claims_read_the_ready_index_in_order() {
        for sql in [NEXT_READY_PRIORITY, READY_RUNS] {
            let p = plan_of(sql);
            assert!(
                p.starts_with("SEARCH") && p.contains("INDEX runs_ready"),
                "{sql}\n{p}"
            );
            assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
            assert!(!p.contains("SCAN"), "{sql}\n{p}");
        }
        let p = plan_of(READY_RUNS);
        assert!(
            p.contains("runs_ready (priority=? AND ready_at>? AND ready_at<?)"),
            "{p}"
        );
        for sql in [CLAIM_RUN, SET_LEASE, SET_READY] {
            let p = plan_of(sql);
            assert!(p.contains("INTEGER PRIMARY KEY (rowid=?)"), "{sql}\n{p}");
        }
    }

    /// The reaper reads the expired leases as the head of `runs_leased`, in its order (no
    /// sort), and lease counts read the live ones as its tail: neither scans the runs.
    #[test]
    fn reaper_and_lease_counts_read_the_lease_index() {
        for sql in [EXPIRED_LEASES, LEASE_COUNTS] {
            let p = plan_of(sql);
            assert!(p.contains("INDEX runs_leased (lease_expires"), "{sql}\n{p}");
            assert!(!p.contains("SCAN r"), "{sql}\n{p}");
        }
        let p = plan_of(EXPIRED_LEASES);
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        assert!(p.contains("runs_leased (lease_expires<?)"), "{p}");
        let p = plan_of(LEASE_COUNTS);
        assert!(p.contains("runs_leased (lease_expires>?)"), "{p}");
        for (sql, index) in [(TOUCH_WORKER, "PRIMARY KEY"), (WORKERS, "SCAN workers")] {
            let p = plan_of(sql);
            assert!(p.contains(index), "{sql}\n{p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
        }
    }

    /// A thread's queue and its highest position are read from the unique index, in
    /// order; a removal finds its row by the primary key.
    #[test]
    fn pending_runs_use_their_indexes() {
        for (sql, index) in [
            (PENDING_OF_THREAD, "pending_runs_by_thread (thread_id=?)"),
            (MAX_PENDING_POSITION, "pending_runs_by_thread"),
            (DELETE_PENDING, "PRIMARY KEY (run_id=?)"),
            (PENDING_EXISTS, "PRIMARY KEY (run_id=?)"),
        ] {
            let p = plan_of(sql);
            assert!(p.contains(index), "{sql}\n{p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
        }
    }

    #[test]
    fn control_plane_reads_use_their_indexes() {
        for (sql, index) in [
            (
                OPEN_INTERRUPTS_OF_RUN,
                "interrupts_by_thread (thread_key=? AND raised_seq>?)",
            ),
            (PENDING_DELIVERY_TIMES, "deliveries_pending"),
            (IDEMPOTENCY_BY_KEY, "PRIMARY KEY"),
            (PURGE_IDEMPOTENCY, "idempotency_expiry"),
            (RELEASE_IDEMPOTENCY, "PRIMARY KEY"),
            (COMPLETE_IDEMPOTENCY, "PRIMARY KEY"),
            (API_KEY_BY_ID, "sqlite_autoindex_api_keys_1"),
            (API_KEY_EXISTS, "sqlite_autoindex_api_keys_1"),
            (REVOKE_API_KEY, "sqlite_autoindex_api_keys_1"),
        ] {
            let p = plan_of(sql);
            assert!(p.contains(index), "{sql}\n{p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
        }
        // Open interrupts in id order: the partial index, no sort.
        let (sql, _) = interrupts(&InterruptFilter {
            open_only: true,
            after: Some(oris_core::id::InterruptId::generate()),
            limit: 10,
            ..Default::default()
        });
        let p = plan_of(&sql);
        assert!(p.contains("interrupts_open"), "{sql}\n{p}");
        assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
        // Every interrupt in id order: the unique index, no sort.
        let (sql, _) = interrupts(&InterruptFilter::default());
        let p = plan_of(&sql);
        assert!(p.contains("sqlite_autoindex_interrupts_1"), "{sql}\n{p}");
        assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
        // The audit log from a cursor: a rowid range, no sort.
        let (sql, _) = audit(&AuditFilter {
            after: Some(5),
            actor: Some("a".into()),
            action: Some("b".into()),
            limit: 3,
        });
        let p = plan_of(&sql);
        assert!(p.contains("INTEGER PRIMARY KEY (rowid>?)"), "{sql}\n{p}");
        assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
    }

    #[test]
    fn new_listing_filters_bind_their_values() {
        use oris_core::id::Timestamp;
        let (sql, values) = runs(&RunFilter {
            created_from: Some(Timestamp(1)),
            created_to: Some(Timestamp(2)),
            updated_from: Some(Timestamp(3)),
            updated_to: Some(Timestamp(4)),
            metadata: vec![("a\"'.$[0]".into(), "x'); DROP TABLE runs; --".into())],
            limit: 5,
            ..Default::default()
        });
        assert_eq!(values.len(), 7, "{sql}");
        assert!(sql.contains("r.created_at >= ?1"), "{sql}");
        assert!(sql.contains("r.created_at < ?2"), "{sql}");
        assert!(sql.contains("r.updated_at >= ?3"), "{sql}");
        assert!(sql.contains("r.updated_at < ?4"), "{sql}");
        assert!(sql.contains("m.key = ?5 AND m.value = ?6"), "{sql}");
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(sql.ends_with("LIMIT ?7"), "{sql}");
        // The statement prepares and runs on the real schema.
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        let n = conn
            .prepare(&sql)
            .unwrap()
            .query(params_from_iter(values))
            .unwrap()
            .mapped(|_| Ok(()))
            .count();
        assert_eq!(n, 0);
    }

    #[test]
    fn listing_sql_binds_every_parameter() {
        let (sql, values) = runs(&RunFilter {
            thread_id: Some(ThreadId::new("t").unwrap()),
            graph: Some("g".into()),
            statuses: vec![StatusKind::Completed, StatusKind::Queued],
            after: Some(RunId::generate()),
            limit: 5,
            ..Default::default()
        });
        assert_eq!(values.len(), 4);
        assert!(sql.ends_with("LIMIT ?4"), "{sql}");
        assert!(sql.contains("r.status IN ('completed', 'queued')"), "{sql}");
        assert!(!sql.contains("'running'"), "{sql}");
    }
}
